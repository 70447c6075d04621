"""prefork's benchmarks: ``python -m bench`` (full run) or ``python -m bench --smoke`` (seconds).

    __main__.py    the command: runs every section, writes bench/results/results.md (+ PNG plots)
    plan.py        how much to run (full, smoke)
    floor.py       the floor: a ~40-line preforking echo server, nothing but accept/recv/sendall/close
    apps.py        handlers prefork serves in the benchmarks (answer with the worker's pid; hold a worker busy)
    client.py      the load client: forked processes in tight loops on blocking sockets
    servers.py     start, observe and kill the servers under test
    throughput.py  echo round trips and new connections per second, prefork vs the floor
    fairness.py    connections per worker: single listener, several listeners, --reuse-port
    recovery.py    kill -9, HUP, startup, failed connections under signal storms
    footprint.py   memory, idle cost, leaks over 100 reloads
    http_section.py  wrk vs gunicorn, through bench/http_bench.py when it and its tools are there
    stop.py        graceful stop under sustained load, prefork --wsgi vs gunicorn sync (also ``python -m bench.stop``)
    report.py      tables, medians, markdown, plots
"""
