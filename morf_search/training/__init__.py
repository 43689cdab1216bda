"""Training: data, the weight-sharing supernet, the one training loop and evaluation.

``data`` (with the generated ``embedded`` default) opens a dataset into train/val splits
with timm transforms; ``supernet`` holds every candidate expert and activates sub-archs;
``loop`` is the resumable training loop the supernet, standalone trials and finalists all
use, in the ``precision`` a config asks for, on one process or on Ray Train workers
(``distributed``); ``evaluate`` scores archs with inherited weights; ``routing_stats``
measures how routed layers use their experts.
"""
