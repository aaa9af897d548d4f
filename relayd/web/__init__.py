"""The daemon's web face: a read-only status page and a JSON API with the control verbs (``[web]``).

``server`` serves HTTP on ``web.listen``; ``api`` answers each request; ``access`` decides who may read
and who may steer; ``documents`` builds the status documents once for every client; ``throughput``
keeps what each hop moved over the last hour and day for the page's plot. The page itself (``static/``)
is plain HTML, CSS and JavaScript served by relayd: nothing is fetched from anywhere else.
"""
