"""Datasets and the batches made of them (the files themselves live in the data cache, data/):
the manifest of every file and its download (manifest.py; corpora.py for tasks.prepare's named
corpora; mmlu_archive.py converts MMLU's tar), labelled rows for tasks.classify (labelled.py),
Alpaca-style instruction records (alpaca.py), raw text split and tokenized once (text.py), token
shards in llm.c's format and their loader (shards.py, on loaders.py's resumable epochs), and the
corpus-to-shards job of tasks.prepare (documents.py reads, encoding.py tokenizes, sharding.py
writes)."""
