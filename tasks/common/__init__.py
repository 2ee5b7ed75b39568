"""What every command shares, and nothing of any other wing: errors and exit codes
(errors.py), how a command's main runs (guard.py: main_guard), signals at any moment
(signals.py: quiet_start, interruptible, pause_point), the flags and their parsing (args.py,
numbers.py: every numeric flag's range), where a command writes (paths.py), memory checked up
front (memory.py), the backend (device.py), JSON and JSON-lines files (jsonfiles.py), progress
bars (progress.py) and plots (plots.py)."""
