"""The `labctl` command line: parse (commands declared in cli/commands.py, on argparse),
call the library, format the output."""
