"""Write README.md from nbs/index.ipynb: the front page, exported the nbdev way without Quarto (nbdev_readme needs it).

    python tools/readme.py            # write README.md (`make readme`)
    python tools/readme.py --check    # exit status 1, and say so, if README.md is not what index.ipynb gives

The cells, in order, each followed by a blank line:
  markdown               verbatim; a line `<!-- tested-versions -->` becomes the table of tested versions, rendered from
                         settings.ini's requirements and tools/requirements/*.txt (so it cannot drift from them)
  code                   a fenced python block, without its `#|` directive lines
  `#| hide`              the cell is dropped (tests that run in nbdev_test but are not shown)
  `#| echo: false`       the code is dropped (its kept outputs stay)
  `#| output: true`      the cell's stored outputs are kept: text as a fenced block, Markdown verbatim
"""
from __future__ import annotations
import argparse, configparser, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- Generated from nbs/index.ipynb by tools/readme.py (`make readme`): edit the notebook, not this file. -->"
VERSIONS_MARK = "<!-- tested-versions -->"


def directives(src:str) -> dict[str, str]:
    "The cell's `#| key: value` lines ({'hide': ''} for `#| hide`)."
    return {k.strip(): v.strip() for k, _, v in (l[3:].partition(":") for l in src.splitlines() if l.startswith("#| "))}


def code_block(src:str, lang:str="python") -> str:
    "A fenced block of `src` without its directive lines."
    body = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip("\n")
    return f"```{lang}\n{body}\n```" if body else ""


def output_text(out:dict) -> str:
    "One stored output as Markdown: markdown verbatim, text (a stream, or text/plain) fenced."
    data = out.get("data", {})
    if "text/markdown" in data: return "".join(data["text/markdown"]).strip("\n")
    text = "".join(out.get("text", data.get("text/plain", "")))
    return code_block(text, "") if text.strip() else ""


def cell_markdown(cell:dict, versions:str) -> str:
    "One cell's part of the page ('' for a hidden cell)."
    src = "".join(cell["source"])
    if cell["cell_type"] == "markdown": return src.replace(VERSIONS_MARK, versions).strip("\n")
    if cell["cell_type"] != "code": return ""
    d = directives(src)
    if "hide" in d: return ""
    parts = [] if d.get("echo") == "false" else [code_block(src)]
    if d.get("output") == "true": parts += [output_text(o) for o in cell.get("outputs", [])]
    return "\n\n".join(p for p in parts if p)


def pins(path:Path) -> list[str]:
    "The `name==version` lines of a requirements file, as `name version`."
    lines = (l.split("#")[0].strip() for l in path.read_text().splitlines())
    return [l.replace("==", " ") for l in lines if "==" in l]


def tested_versions(root:Path=ROOT) -> str:
    "The table of the sets of versions the tests run on: settings.ini's floors, the pinned sets of tools/requirements/."
    ini = configparser.ConfigParser(); ini.read(root/"settings.ini")
    reqs = ini["DEFAULT"]["requirements"].split()
    torch = ", ".join(r for r in reqs if re.match(r"torch(vision)?\b", r))
    newest = "the newest versions pip resolves for " + ", ".join(f"`{r}`" for r in reqs)
    rows = [("newest (`.venv/`)", newest, "`make test`")]
    rows += [(f"{p.stem} ([{p.name}](tools/requirements/{p.name}))", ", ".join(pins(p)), f"`make test-{p.stem}`")
             for p in sorted((root/"tools"/"requirements").glob("*.txt"))]
    return "\n".join([f"Every set runs with the torch that settings.ini declares ({torch}).", "",
                      "| set | versions | command |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def readme(nb_path:Path=ROOT/"nbs"/"index.ipynb", root:Path=ROOT) -> str:
    "The front page that `nb_path` gives."
    nb, versions = json.loads(nb_path.read_text()), tested_versions(root)
    parts = [HEADER] + [cell_markdown(c, versions) for c in nb["cells"]]
    return "\n\n".join(p for p in parts if p) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare README.md with what index.ipynb gives; write nothing")
    ap.add_argument("--nb", type=Path, default=ROOT/"nbs"/"index.ipynb")
    ap.add_argument("--out", type=Path, default=ROOT/"README.md")
    a = ap.parse_args(argv)
    text = readme(a.nb)
    if not a.check:
        a.out.write_text(text)
        print(f"wrote {a.out} ({text.count(chr(10))} lines) from {a.nb}")
        return 0
    if a.out.is_file() and a.out.read_text() == text: return 0
    print(f"{a.out} is not what {a.nb} gives. Fix: edit nbs/index.ipynb, then run `python tools/readme.py` "
          "(make readme).")
    return 1


if __name__ == "__main__": sys.exit(main())
