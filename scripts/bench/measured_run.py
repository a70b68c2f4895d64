"""One command run for a benchmark: wall seconds, exit code, stdout, and the peak RSS of that
command alone (a fresh wrapper process per run, so RUSAGE_CHILDREN covers nothing else)."""
import json
import subprocess
import sys


def measured_run(cmd, label):
    """Runs cmd; returns {'rc', 'wall', 'out', 'rss'} (rss in bytes). Exits naming `label` and
    showing the command's stderr tail when it fails."""
    wrapper = [sys.executable, "-c",
               "import json, resource, subprocess, sys, time; t=time.perf_counter(); "
               "p=subprocess.run(sys.argv[1:], capture_output=True, text=True); w=time.perf_counter()-t; "
               "sys.stderr.write(p.stderr[-4000:] if p.returncode else ''); "
               "print(json.dumps({'rc': p.returncode, 'wall': w, 'out': p.stdout, "
               "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))", *map(str, cmd)]
    proc = subprocess.run(wrapper, capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr}")
    return res
