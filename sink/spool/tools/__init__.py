"""Command-line tools that read a spool: `sink spool ls`, `show`, `stats`, `export` and `tail`.

Theory of operation
-------------------
Every tool reads segments the way `sink.spool.SpoolReader` does. It reads committed records
only, and an open segment only up to the size it had when the tool opened it. No tool takes a
lock on a segment, so a running sink never waits for one.

`reading.scan_spool` adds what the tools need on top of the reader: per-segment
summaries for `ls`, and a report on standard error of every segment part that had to be
skipped (a corrupt frame in a sealed segment, or the torn tail of an open segment that no writer
holds), after which reading goes on with the next segment. A tool exits 1 when it skipped
anything. Message octets are read with `Record.chunks`, so memory stays flat except where a
format needs a whole message (`export --format jsonl --body`).

The command line is wired in `cli.py`; docs/spool-tools.md shows each subcommand.
"""
