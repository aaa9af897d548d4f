"""python -m relayd: the daemon's command line."""

from relayd.daemon import main

main()
