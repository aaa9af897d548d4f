"""relayd's agent: the VM's side of a hop, shipped over the connection and run with the VM's python3.

Stdlib only, relative imports only, Python 3.8 syntax: the VM needs nothing installed beyond python3,
git and git-lfs. The executor sends this package as a zip, then one JSON request line on stdin; the
agent answers with JSON event lines on stdout and one final ``result`` line (see core.py).
"""
