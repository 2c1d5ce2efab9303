"""House rules: layers only look down (every hourjax import, at module level or inside a
function, goes to a package allowed below it), and there are no import cycles between packages.
docs/architecture.md draws the same picture."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "hourjax"

# package -> the hourjax packages it may import (its own modules always)
ALLOWED = {
    "constants": set(),
    "numerics": set(),
    "endpoint": set(),
    "cli": set(),
    "parallel": {"constants"},
    "ops": {"parallel", "constants"},
    "models": {"ops", "parallel", "constants"},
    "config": {"models", "constants"},
    "convert": {"models", "constants"},
    "data": {"models", "config", "constants", "cli"},
    "synthetic": {"data", "models", "config", "constants", "cli"},
    "evaluation": {"constants", "endpoint", "cli"},
    "annotate": {"data", "endpoint", "constants", "cli"},
    "train": {"data", "convert", "models", "ops", "parallel", "config", "constants", "cli"},
    "infer": {"data", "convert", "models", "ops", "parallel", "config", "constants", "cli"},
}


def _package(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT)
  return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: pathlib.Path) -> set[str]:
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      parts = name.split(".")
      if parts[0] == "hourjax" and len(parts) > 1 and (ROOT / parts[1]).exists() or (
          parts[0] == "hourjax" and len(parts) > 1 and (ROOT / f"{parts[1]}.py").exists()):
        out.add(parts[1])
  return out


def test_layers_only_look_down():
  modules = [p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT]
  packages = {_package(p) for p in modules}
  assert packages <= set(ALLOWED), f"packages without a layer in this test: {packages - set(ALLOWED)}"
  upward = []
  for path in modules:
    mine = _package(path)
    for target in _imports(path) - {mine}:
      if target not in ALLOWED[mine]:
        upward.append(f"{path.relative_to(ROOT.parent)} imports hourjax.{target} ({mine} may import "
                      f"{sorted(ALLOWED[mine]) or 'nothing'})")
  assert not upward, "\n".join(upward)


def test_the_layers_form_no_cycle():
  seen, order = set(), []

  def visit(p, stack=()):
    assert p not in stack, f"import cycle: {' -> '.join(stack + (p,))}"
    if p not in seen:
      for q in sorted(ALLOWED[p]):
        visit(q, stack + (p,))
      seen.add(p)
      order.append(p)
  for p in ALLOWED:
    visit(p)
  assert len(order) == len(ALLOWED)
