"""python -m relayd.cli: relayctl."""

from relayd.cli import main

main()
