from slimtune.cli import entry

entry()
