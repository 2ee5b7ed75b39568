"""Files on disk, outside the engine: the download cache (hub.py: cache folder, downloads with
resume, sha256 checks, clear offline errors), files the cache builds from a downloaded archive
(derived.py: verified, rolled back on a bad digest) and atomic writes (atomic.py). gpt2/, tasks/
and bench/ use them; minigrad does not (it only saves and loads tensors, in minigrad/io.py)."""
