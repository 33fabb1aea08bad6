"""Regenerate .dvc/plots_offline.html, the page template `dvc plots show` uses (.dvc/config: plots.html_template).

DVC's own template loads Vega, Vega-Lite and Vega-Embed from a CDN, so its charts are blank offline.
This one inlines them (vl-convert's bundle: `pip install vl-convert-python`, needed only to regenerate).
DVC's plot divs call vegaEmbed(el, spec) as the page is parsed, before a module script runs: a small
shim queues those calls, and the bundle draws them once loaded.

    python .ci/offline_plots_template.py
"""

from pathlib import Path

import vl_convert

SNIPPET = "window.vegaEmbed = vegaEmbed; for (const [el, spec] of window.rnpPending) { vegaEmbed(el, spec); }"
HEAD = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    <meta charset="utf-8">
    <!-- rnp: Vega, Vega-Lite and Vega-Embed inlined below (vl-convert %s), so the page renders offline; .ci/offline_plots_template.py -->
    <script>
        window.rnpPending = [];
        window.vegaEmbed = function (el, spec) { window.rnpPending.push([el, spec]); };
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
    <script type="module">
"""
TAIL = """
    </script>
</body>
</html>
"""

if __name__ == "__main__":
    bundle = vl_convert.javascript_bundle(SNIPPET)
    assert "</script" not in bundle  # it would end the script element early
    out = Path(__file__).resolve().parents[1] / ".dvc" / "plots_offline.html"
    out.write_text(HEAD.replace("%s", vl_convert.__version__) + bundle + TAIL)
    print(f"{out}: {out.stat().st_size} bytes")
