"""The search: what a trial does, the engines that schedule trials, the trial log and the Pareto front.

``runner`` turns an arch into objectives (one-shot or standalone); ``engines`` adapt Ray Tune
and NNI to it; ``trials`` is the run's trials.csv; ``pareto`` sorts rows into fronts and
measures hypervolume; ``progress`` reports how far a search is.
"""
