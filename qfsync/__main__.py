from qfsync.cli import run

run()
