from qfsync.cli import main

main(prog_name="qfsync")
