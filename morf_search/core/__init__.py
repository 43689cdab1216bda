"""What every part of morf-search stands on: user errors, atomic file I/O, device choice, progress output
and the allocator setting that keeps timings steady. Nothing here knows about networks or searches."""
