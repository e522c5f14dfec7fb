"""Parse-level checks of a Terraform tree, without terraform or a cloud.

`check_tree(root)` parses the root module and every local module it calls
(``source = "./..."``) with the ``hcl2`` package (python-hcl2's API; checkov
ships it as bc-python-hcl2) and returns a list of problems, one string each:

* a variable used but not declared, or declared but never used (per module);
* a reference to a resource, data source, local, module or module output that
  does not exist (module outputs are looked up in the called module);
* a module argument the called module does not declare, or a required
  variable (no default) the caller does not pass;
* two module calls that depend on each other (checkov silently stops
  resolving the variables of such modules and drops the checks needing them);
* an ingress rule open to 0.0.0.0/0 or ::/0 anywhere but the load balancer
  module (and there only on ports 80/443);
* an image tag that is, or defaults to, ``latest``, an image tag variable
  without a validation that refuses it, or an image reference ``...:latest``;
* a module directory without main.tf, variables.tf, outputs.tf, versions.tf
  and README.md, or a variable without type or description.

Expressions come out of the parser as strings in ``${...}``; references are
found with regular expressions inside those spans only, so literal text (a
description saying "var.x") never counts.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Iterable, Iterator

import hcl2

WORLD_CIDRS = {"0.0.0.0/0", "::/0"}
ALB_MODULE = "alb"
ALB_PUBLIC_PORTS = {80, 443}
MODULE_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")
MODULE_META_ARGS = {"source", "version", "count", "for_each", "providers", "depends_on"}
# Resource types are recognised by their provider prefix (or built-in name).
RESOURCE_PREFIXES = ("aws_", "random_", "null_", "time_", "tls_", "archive_", "local_")
BUILTIN_RESOURCE_TYPES = {"terraform_data"}

IDENT = r"[A-Za-z_][A-Za-z0-9_-]*"
RE_VAR = re.compile(rf"(?<![\w.])var\.({IDENT})")
RE_LOCAL = re.compile(rf"(?<![\w.])local\.({IDENT})")
RE_DATA = re.compile(rf"(?<![\w.])data\.({IDENT})\.({IDENT})")
RE_MODULE = re.compile(rf"(?<![\w.])module\.({IDENT})(?:\.({IDENT}))?")
RE_RESOURCE = re.compile(rf"(?<![\w.])([a-z][a-z0-9]*_[a-z0-9_]+)\.({IDENT})")
RE_IMAGE_LATEST = re.compile(r"[A-Za-z0-9./_-]+:latest(?![\w.-])", re.IGNORECASE)


# --------------------------------------------------------------- utilities

def expression_spans(text: str) -> Iterator[str]:
    """Yield the contents of every ``${...}`` span in text (balanced braces)."""
    i = 0
    while True:
        start = text.find("${", i)
        if start < 0:
            return
        depth, j = 0, start + 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        yield text[start + 2 : j]
        i = start + 2


def walk_strings(node: Any) -> Iterator[str]:
    """Every string in a parsed structure, dictionary keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str):
                yield k
            yield from walk_strings(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from walk_strings(v)


def walk_scalars(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for v in node.values():
            yield from walk_scalars(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from walk_scalars(v)
    else:
        yield node


def first(value: Any) -> Any:
    """Unwrap the one-element lists the parser puts around attribute values."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def literal(value: Any) -> Any:
    """The value if it is a literal (no ``${``), else None."""
    value = first(value)
    if isinstance(value, str) and "${" in value:
        return None
    return value


def expressions_in(node: Any) -> Iterator[str]:
    for s in walk_strings(node):
        yield from expression_spans(s)


def blocks(doc_list: Iterable[dict], kind: str) -> Iterator[dict]:
    for doc in doc_list:
        for block in doc.get(kind, []) or []:
            yield block


# ------------------------------------------------------------------ module

@dataclasses.dataclass
class Module:
    path: pathlib.Path
    label: str
    docs: list[dict]
    variables: dict[str, dict]
    outputs: dict[str, dict]
    locals: dict[str, Any]
    resources: dict[tuple[str, str], dict]
    data: dict[tuple[str, str], dict]
    calls: dict[str, dict]

    @property
    def dir_name(self) -> str:
        return self.path.name


def load_module(path: pathlib.Path, label: str) -> Module:
    docs = []
    for tf in sorted(path.glob("*.tf")):
        with tf.open(encoding="utf-8") as fh:
            try:
                docs.append(hcl2.load(fh))
            except Exception as exc:  # the parser raises lark errors
                raise ValueError(f"{tf}: cannot parse: {exc}") from exc
    variables, outputs, local_values, resources, data, calls = {}, {}, {}, {}, {}, {}
    for b in blocks(docs, "variable"):
        variables.update(b)
    for b in blocks(docs, "output"):
        outputs.update(b)
    for b in blocks(docs, "locals"):
        local_values.update({k: v for k, v in b.items() if not k.startswith("__")})
    for b in blocks(docs, "resource"):
        for rtype, named in b.items():
            for rname, body in named.items():
                resources[(rtype, rname)] = body
    for b in blocks(docs, "data"):
        for dtype, named in b.items():
            for dname, body in named.items():
                data[(dtype, dname)] = body
    for b in blocks(docs, "module"):
        calls.update(b)
    return Module(path, label, docs, variables, outputs, local_values, resources, data, calls)


def module_tree(root: pathlib.Path) -> list[tuple[Module, Module | None, str | None]]:
    """[(module, parent, call name)] for the root and every local module it calls."""
    out: list[tuple[Module, Module | None, str | None]] = []
    seen: set[pathlib.Path] = set()

    def visit(path: pathlib.Path, label: str, parent: Module | None, call: str | None) -> None:
        module = load_module(path, label)
        out.append((module, parent, call))
        if path.resolve() in seen:
            return
        seen.add(path.resolve())
        for name, body in module.calls.items():
            source = literal(body.get("source"))
            if isinstance(source, str) and source.startswith(("./", "../")):
                visit((path / source).resolve(), f"{label}/{name}" if label != "." else f"module.{name}", module, name)

    visit(root.resolve(), ".", None, None)
    return out


# ------------------------------------------------------------------ checks

def _usage_docs(module: Module) -> list[dict]:
    """The module's documents without its variable blocks: a variable used only
    in its own validation is not used."""
    return [{k: v for k, v in doc.items() if k != "variable"} for doc in module.docs]


def check_variables(module: Module) -> list[str]:
    problems = []
    everywhere = list(expressions_in(module.docs))
    used_outside_decl = {m for e in expressions_in(_usage_docs(module)) for m in RE_VAR.findall(e)}
    used_anywhere = {m for e in everywhere for m in RE_VAR.findall(e)}
    for name in sorted(used_anywhere - module.variables.keys()):
        problems.append(f"{module.label}: var.{name} is used but not declared")
    for name in sorted(module.variables.keys() - used_outside_decl):
        problems.append(f"{module.label}: variable {name!r} is declared but never used")
    for name, body in sorted(module.variables.items()):
        if "type" not in body:
            problems.append(f"{module.label}: variable {name!r} has no type")
        if not literal(body.get("description")):
            problems.append(f"{module.label}: variable {name!r} has no description")
    return problems


def check_references(module: Module, children: dict[str, Module]) -> list[str]:
    problems = []
    exprs = list(expressions_in(module.docs))
    used_locals = set()
    for e in exprs:
        for name in RE_LOCAL.findall(e):
            used_locals.add(name)
            if name not in module.locals:
                problems.append(f"{module.label}: local.{name} is referenced but not defined")
        for dtype, dname in RE_DATA.findall(e):
            if (dtype, dname) not in module.data:
                problems.append(f"{module.label}: data.{dtype}.{dname} is referenced but not declared")
        for mname, output in RE_MODULE.findall(e):
            if mname not in module.calls:
                problems.append(f"{module.label}: module.{mname} is referenced but not called")
            elif output and mname in children and output not in children[mname].outputs:
                problems.append(f"{module.label}: module.{mname}.{output} is referenced but the module has no such output")
        for rtype, rname in RE_RESOURCE.findall(e):
            if not (rtype.startswith(RESOURCE_PREFIXES) or rtype in BUILTIN_RESOURCE_TYPES):
                continue
            if (rtype, rname) not in module.resources:
                problems.append(f"{module.label}: {rtype}.{rname} is referenced but not declared")
    for name in sorted(module.locals.keys() - used_locals):
        problems.append(f"{module.label}: local {name!r} is defined but never used")
    return sorted(set(problems))


def check_module_calls(module: Module, children: dict[str, Module]) -> list[str]:
    problems = []
    for name, body in module.calls.items():
        child = children.get(name)
        if child is None:
            source = literal(body.get("source"))
            if isinstance(source, str) and source.startswith(("./", "../")):
                problems.append(f"{module.label}: module {name!r} has a local source {source!r} that was not loaded")
            else:
                problems.append(f"{module.label}: module {name!r} is not a local module ({source!r}); the scanner cannot see registry modules offline")
            continue
        passed = {k for k in body if not k.startswith("__")} - MODULE_META_ARGS
        for arg in sorted(passed - child.variables.keys()):
            problems.append(f"{module.label}: module {name!r} is passed {arg!r}, which {child.label} does not declare")
        for var, decl in sorted(child.variables.items()):
            if "default" not in decl and var not in passed:
                problems.append(f"{module.label}: module {name!r} does not pass required variable {var!r}")
    return problems


def check_module_cycles(module: Module) -> list[str]:
    """Module calls that depend on each other (directly or through others).
    Terraform accepts them while resources do not cycle, but checkov then
    resolves none of the variables of the modules involved and drops the
    checks that need them, silently."""
    deps = {
        name: {m for e in expressions_in(body) for m, _ in RE_MODULE.findall(e) if m != name}
        for name, body in module.calls.items()
    }
    problems, seen = [], set()

    def reaches(start: str, goal: str) -> bool:
        stack, visited = [start], set()
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node in visited:
                continue
            visited.add(node)
            stack.extend(deps.get(node, ()))
        return False

    for a in sorted(deps):
        for b in sorted(deps[a]):
            pair = tuple(sorted((a, b)))
            if pair not in seen and reaches(b, a):
                seen.add(pair)
                problems.append(f"{module.label}: modules {pair[0]!r} and {pair[1]!r} depend on each other "
                                "(checkov then cannot resolve their variables)")
    return problems


def _var_values(module: Module, parent: Module | None, call: str | None, name: str) -> list[Any]:
    """Literal values a variable can take: its default and what the caller passes."""
    values = []
    decl = module.variables.get(name, {})
    if "default" in decl:
        values.append(decl["default"])
    if parent is not None and call is not None:
        passed = parent.calls.get(call, {}).get(name)
        if passed is not None:
            values.append(passed)
    return values


def _resolve(node: Any, module: Module, parent: Module | None, call: str | None) -> list[Any]:
    """node plus the literal values of every variable it references (one level,
    and through the caller's literal arguments)."""
    resolved = [node]
    for e in expressions_in(node):
        for var in RE_VAR.findall(e):
            resolved.extend(_var_values(module, parent, call, var))
    return resolved


def _opens_world(node: Any, module: Module, parent: Module | None, call: str | None) -> bool:
    return any(s in WORLD_CIDRS for s in walk_strings(_resolve(node, module, parent, call)))


def _ports(rule: dict) -> set[int]:
    ports = set()
    for key in ("from_port", "to_port"):
        for v in walk_scalars(rule.get(key)):
            if isinstance(v, int):
                ports.add(v)
            elif isinstance(v, str) and v.isdigit():
                ports.add(int(v))
            else:
                ports.add(-1)  # computed: not provably 80/443
    return ports


def ingress_rules(module: Module) -> Iterator[tuple[str, dict, dict]]:
    """(address, rule body, cidr-carrying part) for every ingress rule."""
    for (rtype, rname), body in module.resources.items():
        address = f"{rtype}.{rname}"
        if rtype == "aws_security_group":
            for rule in body.get("ingress", []) or []:
                for r in rule if isinstance(rule, list) else [rule]:
                    yield address, r, r
            for dyn in body.get("dynamic", []) or []:
                for label, content in dyn.items():
                    if label == "ingress":
                        yield address, content, content
        elif rtype == "aws_vpc_security_group_ingress_rule":
            yield address, body, {k: body.get(k) for k in ("cidr_ipv4", "cidr_ipv6")}
        elif rtype == "aws_security_group_rule" and literal(body.get("type")) == "ingress":
            yield address, body, {k: body.get(k) for k in ("cidr_blocks", "ipv6_cidr_blocks")}


def check_ingress(module: Module, parent: Module | None, call: str | None) -> list[str]:
    problems = []
    for address, rule, cidrs in ingress_rules(module):
        if not _opens_world(cidrs, module, parent, call):
            continue
        where = f"{module.label}: {address}"
        if module.dir_name != ALB_MODULE or module.label == ".":
            problems.append(f"{where} opens ingress to the internet (0.0.0.0/0 or ::/0); only the load balancer may")
        elif not _ports(rule) <= ALB_PUBLIC_PORTS:
            problems.append(f"{where} opens ports other than 80/443 to the internet")
    return problems


def _is_image_tag_name(name: str) -> bool:
    return "image_tag" in name or name.endswith("_tag") and "image" in name


def check_image_tags(module: Module, tfvars: dict | None = None) -> list[str]:
    problems = []
    for name, decl in module.variables.items():
        if not _is_image_tag_name(name):
            continue
        default = literal(decl.get("default"))
        if isinstance(default, str) and default.lower() == "latest":
            problems.append(f"{module.label}: variable {name!r} defaults to 'latest'")
        validations = decl.get("validation", [])
        if not any("latest" in s.lower() for s in walk_strings(validations)):
            problems.append(f"{module.label}: variable {name!r} has no validation refusing 'latest'")
    for call, body in module.calls.items():
        for arg, value in body.items():
            if _is_image_tag_name(arg) and isinstance(literal(value), str) and literal(value).lower() == "latest":
                problems.append(f"{module.label}: module {call!r} is passed {arg} = 'latest'")
    for s in walk_strings(module.docs):
        for ref in RE_IMAGE_LATEST.findall(s):
            problems.append(f"{module.label}: image reference {ref!r} uses the moving tag latest")
    for name, value in (tfvars or {}).items():
        if _is_image_tag_name(name) and isinstance(literal(value), str) and literal(value).lower() == "latest":
            problems.append(f"tfvars: {name} = 'latest'")
    return problems


def check_files(module: Module) -> list[str]:
    if module.label == ".":
        required = ("main.tf", "variables.tf", "outputs.tf", "versions.tf")
    else:
        required = MODULE_FILES
    return [f"{module.label}: missing {f}" for f in required if not (module.path / f).is_file()]


def load_tfvars(path: pathlib.Path) -> dict:
    with path.open(encoding="utf-8") as fh:
        return hcl2.load(fh)


def check_tfvars(root: Module, tfvars: dict) -> list[str]:
    return [f"tfvars: {k!r} is not a variable of the root module"
            for k in sorted(tfvars) if not k.startswith("__") and k not in root.variables]


def check_tree(root: pathlib.Path, tfvars_path: pathlib.Path | None = None) -> list[str]:
    tree = module_tree(root)
    problems: list[str] = []
    tfvars = load_tfvars(tfvars_path) if tfvars_path else None
    for module, parent, call in tree:
        children = {c: m for m, p, c in tree if p is module and c is not None}
        problems += check_files(module)
        problems += check_variables(module)
        problems += check_references(module, children)
        problems += check_module_calls(module, children)
        problems += check_module_cycles(module)
        problems += check_ingress(module, parent, call)
        problems += check_image_tags(module, tfvars if parent is None else None)
    if tfvars is not None:
        problems += check_tfvars(tree[0][0], tfvars)
    return problems
