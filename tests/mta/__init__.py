"""Real-MTA test harness: real Exim and Postfix on loopback, an SMTP sink, a scripted scenario.

Modules:

* ``install.sh``  installs Exim (apt), a private Postfix (apt-get download + dpkg -x), peers.
* ``sink``        SMTP sink on 127.0.0.1 answering as real servers do: 250/451/550 by
                  recipient local part (multi-line 550 and 451), ``250 2.0.0 Ok: queued as
                  ID`` with a fresh id per transaction, and per message a slow, a multi-line
                  or a 421-and-hang-up end-of-data reply; it records every answer.
* ``filter``      amavisd-like content-filter proxy on 127.0.0.1: takes a message from the
                  MTA, re-injects it into the MTA's second listener and answers with the
                  MTA's reply (``queued as NEWID`` / ``id=NEWID``) passed through.
* ``scenario``    the logical script shared by both MTAs and the ground truth computed from
                  it (the sink's answers predicted from its policy; same with the filter).
* ``exim`` / ``postfix``  drivers that configure, start, feed and stop each MTA, with or
                  without the content filter.
* ``runner``      runs the scenario against one MTA (``filtered=`` the variant), checks the
                  sink's and filter's records against the script, returns log and truth.
* ``fixtures``    pytest plugin (session fixtures) used by tests/test_real_mta.py, test_peers.py.
* ``record``      regenerates ``samples/{exim,postfix}.log`` and ``.truth.json``; also the
                  logstats config of the scenario (shipped defaults + the account map).
"""
