"""Real-MTA test harness: real Exim and Postfix on loopback, an SMTP sink, a scripted scenario.

Modules:

* ``install.sh``  installs Exim (apt), a private Postfix (apt-get download + dpkg -x), peers.
* ``sink``        SMTP sink on 127.0.0.1 answering 250/451/550 by recipient local part.
* ``scenario``    the logical script shared by both MTAs and the ground truth computed from it.
* ``exim`` / ``postfix``  drivers that configure, start, feed and stop each MTA.
* ``runner``      runs the scenario against one MTA and returns its log and truth.
* ``fixtures``    pytest plugin (session fixtures) used by tests/test_real_mta.py, test_peers.py.
* ``record``      regenerates ``samples/{exim,postfix}.log`` and ``.truth.json``.
"""
