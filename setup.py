"""Build hook: generate the gRPC code from proto/ before building the
package (regular and editable installs alike). Metadata is in pyproject.toml.

The proto's package is enforcer.v1, so the generated modules land in
enforcer/v1/ and import each other as `enforcer.v1`; that directory is
build output (gitignored), never edited by hand.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = sorted((ROOT / "proto").rglob("*.proto"))


def generate_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    for proto in PROTOS:
        args = ["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={ROOT}",
                f"--grpc_python_out={ROOT}", f"--pyi_out={ROOT}", str(proto)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    for pkg in {p.relative_to(ROOT / "proto").parent for p in PROTOS}:
        init = ROOT / pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/ by the package build; do not edit."""\n')


class BuildPyWithProtos(build_py):
    """Generate the protos; ship bpf/ (the C the daemon compiles at start)
    inside the package as enforcer/_bpf for non-editable installs."""

    def run(self) -> None:
        generate_protos()
        # Package discovery ran before the code was generated: in a fresh
        # clone it did not see enforcer/v1, which the wheel must still carry.
        for pkg in sorted({".".join(p.relative_to(ROOT / "proto").parent.parts) for p in PROTOS}):
            if self.packages is not None and pkg not in self.packages:
                self.packages.append(pkg)
        super().run()
        if not getattr(self, "editable_mode", False):
            import shutil

            target = Path(self.build_lib) / "enforcer" / "_bpf"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / "bpf", target, ignore=shutil.ignore_patterns("*.o"))


setup(cmdclass={"build_py": BuildPyWithProtos})
