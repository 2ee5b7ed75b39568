"""Run folders and the models in them: starting or resuming a run folder (folder.py),
checkpoints (checkpoint.py), and the one way every command turns --init into a model
(models.py: `resolve_init`, `is_run_folder`, `build_model`, `load_language_model`)."""
