"""The `labctl` command line (click): parse, call the library, format the output."""
