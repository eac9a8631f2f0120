"""The server: a pre-forking master and uvloop workers that share the listening sockets."""
