# 7. The HTML report. `snakemake --report FILE` works at any time. With `report_html` set (the local
#    profile sets results/report.html), a run that produced or updated tables or figures writes the
#    report when it succeeds, so `snakemake --profile profiles/local` alone yields it. A run with
#    nothing to do does not call this handler.

import subprocess
import sys


def write_report_if_stale():
    target = CONFIG.get("report_html")
    if not target:
        return
    report_path = Path(target)
    sources = [Path(p) for p in report_targets()]
    if report_path.exists() and all(
        p.exists() and p.stat().st_mtime <= report_path.stat().st_mtime for p in sources
    ):
        return
    Path(AGG, "logs").mkdir(parents=True, exist_ok=True)
    dump = Path(AGG, "logs", "report_config.yaml")
    dump.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", workflow.main_snakefile, "--directory", os.getcwd(),
           "--configfile", str(dump.absolute()), "--report", str(report_path), "--nolock", "--quiet", "all"]
    logger.info(f"writing the report: {report_path}")
    with open(Path(AGG, "logs", "report.log"), "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        logger.warning(f"writing {report_path} failed; see {AGG}/logs/report.log "
                       f"(retry: snakemake --report {report_path} with the same options)")


onsuccess:
    write_report_if_stale()
