"""The layers docs/ARCHITECTURE.md promises ("Who may call whom"): no module
of rrc/ imports one of a higher layer, not even inside a function, and no
import cycle exists.  The layers are read from the document itself, so the
document and the code cannot part ways unseen."""
import ast
import re

from helpers import REPO

PACKAGE = REPO / 'rrc'


def documented_layers():
    """Module (or ``web``, ``cli``) -> the number of the first layer naming it."""
    text = (REPO / 'docs' / 'ARCHITECTURE.md').read_text()
    section = text.split('### Who may call whom', 1)[1].split('\nNothing writes', 1)[0]
    layers = {}
    for number, item in re.findall(r'^(\d)\. (.*?)(?=^\d\. |\Z)', section, re.M | re.S):
        for name in re.findall(r'`([a-z]+)/?`', item):
            layers.setdefault(name, int(number))
    return layers


def package_modules():
    """``rrc.web.app`` -> its file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob('*.py'):
        name = '.'.join(path.relative_to(REPO).with_suffix('').parts)
        modules[name.removesuffix('.__init__')] = path
    return modules


def imports_of(name, path, modules):
    """(imported module, line) of every relative import in a module, at its top or in a function."""
    package = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = '.'.join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                found.append((f'{target}.{alias.name}' if f'{target}.{alias.name}' in modules else target,
                              node.lineno))
    return found


def layer_name(module):
    """The name a layer lists a module by: ``rrc.web.app`` -> ``web``, ``rrc.store`` -> ``store``."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_every_module_is_in_a_documented_layer():
    layers = documented_layers()
    unplaced = {layer_name(m) for m in package_modules() if layer_name(m)} - set(layers)

    assert unplaced == set(), f'modules docs/ARCHITECTURE.md does not place in a layer: {sorted(unplaced)}'


def test_no_module_imports_one_of_a_higher_layer():
    layers, modules = documented_layers(), package_modules()
    upward = [f'{name} imports {target} (line {line})'
              for name, path in modules.items() for target, line in imports_of(name, path, modules)
              if layers.get(layer_name(target), 0) > layers.get(layer_name(name), 0)]

    assert upward == []


def test_no_import_cycle_even_through_imports_inside_functions():
    modules = package_modules()
    graph = {name: {target for target, _ in imports_of(name, path, modules) if target in modules}
             for name, path in modules.items()}
    cycles = []

    def visit(name, path):
        for target in graph[name] - {'rrc'}:
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif len(path) < 30:
                visit(target, path + [target])
    for name in graph:
        visit(name, [name])

    assert cycles == []
