#!/usr/bin/env bash
# Install the real applications tests/realapps runs (pinned: the versions the tests were written
# against). About 1 minute to install on a fresh machine; the tests take about 35 s.
set -euo pipefail
python3 -m pip install --quiet --disable-pip-version-check \
    'dask==2026.8.0' 'distributed==2026.8.0' \
    'jupyter_server==2.21.1' 'jupyter_server_terminals==0.5.4' 'terminado==0.18.1' \
    'ipykernel==7.4.0' 'jupyter_client==8.10.0' 'pyzmq==27.3.0' \
    'jupyter-server-proxy==4.6.0' \
    'bokeh==3.9.2'
# The tornado these tests compare against must stay the one the package is tested with.
python3 -c 'import tornado; print("realapps: tornado", tornado.version)'
