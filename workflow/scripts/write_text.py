"""Write params.text to the rule's single output (run counts)."""

from pathlib import Path

sm = snakemake  # noqa: F821  (injected by snakemake)
Path(sm.output[0]).write_text(sm.params.text)
Path(sm.log[0]).write_text(f"wrote {sm.output[0]}\n")
