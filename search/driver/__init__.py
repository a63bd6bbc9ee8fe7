"""The driver: run, resume and extend a sweep (Ray Tune), one writer for its record, live progress.

It never imports ``search.present``: presentation reads what the driver produced."""
