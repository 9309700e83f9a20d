"""Stand-in peers of lienthong: real HTTP servers on 127.0.0.1 with seeded, persistent state.

* :class:`mocks.one_stop.OneStopMock` — the provincial one-stop system (docs/wire/onestop.md);
* :class:`mocks.national_portal.NationalPortalMock` — the national portal's adapter.

``python -m mocks up`` runs both. This package imports nothing from ``lienthong`` or
``connectors``; it reads its seed and rules from ``fixtures/``. See mocks/README.md.
"""
