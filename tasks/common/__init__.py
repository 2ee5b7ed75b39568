"""What every command shares, and nothing of any other wing: errors and exit codes
(errors.py), how a command's main runs (guard.py: main_guard, pause_point), the flags and
their parsing (args.py), the backend (device.py), JSON and JSON-lines files (jsonfiles.py),
progress bars (progress.py) and plots (plots.py)."""
