"""The reference docs and the code agree: every accepted config key is documented,
every documented key is accepted, and the README links into docs/, not outside the repo."""

from __future__ import annotations

import re
from pathlib import Path

from edge_agent.config import accepted_keys

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Keys SPEC 1 lists that the loader does not accept yet: others are adding them now.
# This list only shrinks: once a key is accepted, the test below fails until it is
# removed from here.
NOT_YET_ACCEPTED: frozenset[str] = frozenset()

# A reference row: | `section.key` | default | meaning |
_ROW = re.compile(r"^\|\s*`([a-z_]+\.[a-z_]+)`\s*\|", re.M)


def documented_keys() -> list[str]:
    return _ROW.findall((DOCS / "configuration.md").read_text(encoding="utf-8"))


def test_every_accepted_key_is_documented() -> None:
    documented = set(documented_keys())
    missing = [k for k in accepted_keys() if k not in documented]
    assert not missing, (
        "config keys the loader accepts but docs/configuration.md does not document "
        f"(add a row `| \\`key\\` | default | meaning |` to its section's table): {missing}"
    )


def test_every_documented_key_is_accepted() -> None:
    accepted = set(accepted_keys())
    unknown = [k for k in documented_keys() if k not in accepted and k not in NOT_YET_ACCEPTED]
    assert not unknown, (
        f"docs/configuration.md documents keys the loader rejects: {unknown} "
        "(remove them from the docs, or accept them in edge_agent/config.py)"
    )
    pending = sorted(NOT_YET_ACCEPTED - accepted)
    if pending:
        print(f"documented from SPEC 1, not accepted by the loader yet: {pending}")


def test_not_yet_accepted_list_only_shrinks() -> None:
    accepted = set(accepted_keys())
    landed = sorted(NOT_YET_ACCEPTED & accepted)
    assert not landed, (
        f"now accepted by the loader: {landed}; remove them from NOT_YET_ACCEPTED in "
        "tests/test_docs.py (they stay documented in docs/configuration.md)"
    )
    documented = set(documented_keys())
    stray = sorted(NOT_YET_ACCEPTED - documented)
    assert not stray, (
        f"NOT_YET_ACCEPTED names keys docs/configuration.md does not document: {stray}"
    )


def test_documented_keys_are_unique() -> None:
    keys = documented_keys()
    dups = sorted({k for k in keys if keys.count(k) > 1})
    assert not dups, f"documented twice in docs/configuration.md: {dups}"


def test_readme_links_stay_inside_the_repository() -> None:
    for md in [ROOT / "README.md", *DOCS.glob("*.md")]:
        text = md.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target:
                continue
            resolved = (md.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), (
                f"{md.name} links outside the repository: {target}"
            )
            assert resolved.exists(), f"{md.name} links to a missing file: {target}"


def test_cited_measurements_are_kept_in_the_repository() -> None:
    # FIELD-NOTES was a file outside the repository: users could not check a figure.
    cited = [
        ROOT / "README.md",
        ROOT / "bench" / "README.md",
        *DOCS.glob("*.md"),
        *(ROOT / "bench").glob("*.py"),
    ]
    for path in cited:
        assert "FIELD-NOTES" not in path.read_text(encoding="utf-8"), path
    notes = (DOCS / "field-notes.md").read_text(encoding="utf-8")
    # The peers' figures the README compares with, at their source.
    for figure in (
        "RSS ~23 MB",
        "130-345 MB RSS",
        "90-110 MB RSS",
        "~1.0-1.4% of a core",
        "~35-45% of a core",
        "max_queued_messages 1000",
    ):
        assert figure in notes, figure


# EDGE_AGENT_<SECTION>_<KEY> is the config's namespace: a variable there that names no
# key stops the agent with a config error (SPEC 1). Our own tools (CI, scripts, benches,
# the unit, the image) must keep their knobs out of it, and every override the docs show
# must name a real key. (EDGE_AGENT_ARM_CHECK=0 once made .ci/run fail 13 tests.)
_ENV_NAME = re.compile(r"\bEDGE_AGENT_([A-Z0-9_]*)")
_ENV_WHERE = ("README.md", "docs", "systemd", "scripts", ".ci", "bench", "Dockerfile.arm64")


def test_every_edge_agent_variable_in_the_repo_names_a_config_key() -> None:
    accepted = set(accepted_keys())
    files: list[Path] = []
    for where in _ENV_WHERE:
        p = ROOT / where
        files += [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    wrong = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for m in _ENV_NAME.finditer(text):
            rest = m.group(1)
            if rest == "" or text[m.end() : m.end() + 1] in ("<", "{", "$"):
                continue  # the bare prefix, or a placeholder like EDGE_AGENT_<SECTION>_<KEY>
            section, _, key = rest.lower().partition("_")
            if f"{section}.{key}" not in accepted:
                wrong.append(f"{f.relative_to(ROOT)}: EDGE_AGENT_{rest}")
    assert files and not wrong, wrong
