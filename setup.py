"""Build the compiled kernels of sklearn-rnn.

Every ``pyx_rnn/*.pyx`` file becomes its own extension ``pyx_rnn.<name>``.
OpenMP is used when the C compiler accepts it; otherwise the same sources are
built serially (Cython's ``prange``/``parallel`` fall back to plain loops).
Set ``SKLEARN_RNN_NO_OPENMP=1`` to force the serial build.
"""

import glob
import os
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

OPENMP_TEST_PROGRAM = textwrap.dedent(
    """\
    #include <omp.h>
    #include <stdio.h>

    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+: n)
        n += 1;
        printf("%d %d\\n", omp_get_max_threads(), n);
        return 0;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _new_compiler():
    """A C compiler configured like the one build_ext will use."""
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    except ImportError:  # pragma: no cover - very old setuptools
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler
    compiler = new_compiler()
    customize_compiler(compiler)
    return compiler


def openmp_flags(compiler_type):
    """Compile and link flags that turn OpenMP on for this compiler type."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


LIBMVEC_TEST_PROGRAM = textwrap.dedent(
    """\
    #include <math.h>
    #include <stdio.h>
    __attribute__((simd("notinbranch"))) float tanhf(float);
    __attribute__((target_clones("avx2", "default")))
    static void f(float *restrict x, int n) {
        for (int i = 0; i < n; i++) x[i] = tanhf(x[i]);
    }
    int main(void) {
        float x[64];
        for (int i = 0; i < 64; i++) x[i] = i / 64.0f;
        f(x, 64);
        printf("%f\\n", x[63]);
        return 0;
    }
    """
)


def _try_build(program, compile_flags, link_flags, libraries=()):
    """Return True if ``program`` compiles and links with these flags."""
    compiler = _new_compiler()
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "test_program.c")
        with open(source, "w") as f:
            f.write(program)
        try:
            objects = compiler.compile(
                [source], output_dir=tmp, extra_postargs=compile_flags
            )
            compiler.link_executable(
                objects, "test_program", output_dir=tmp,
                libraries=list(libraries), extra_postargs=link_flags,
            )
        except Exception as exc:  # CompileError, LinkError, missing compiler
            print(f"test program failed to build: {exc}", file=sys.stderr)
            return False
    return True


def check_libmvec_support():
    """True if glibc's vector math library can vectorise our gate loops.

    The kernels then call libmvec's SIMD tanh/exp, one version per instruction
    set chosen at load time (pyx_rnn/_vecmath.h); otherwise they call the
    scalar libm functions. Set SKLEARN_RNN_NO_LIBMVEC=1 to force the latter.
    """
    if _env_flag("SKLEARN_RNN_NO_LIBMVEC"):
        return False
    return _try_build(LIBMVEC_TEST_PROGRAM, ["-O3", "-fno-math-errno"], [],
                      libraries=["mvec", "m"])


def check_openmp_support():
    """Return True if a tiny OpenMP program compiles and links."""
    # CFLAGS/LDFLAGS from the environment still apply (customize_compiler),
    # so e.g. macOS users can pass "-Xpreprocessor -fopenmp -lomp" there.
    compile_flags, link_flags = openmp_flags(_new_compiler().compiler_type)
    return _try_build(OPENMP_TEST_PROGRAM, compile_flags, link_flags)


def warn_no_openmp(reason):
    bar = "*" * 78
    print(
        f"\n{bar}\n"
        "WARNING: building sklearn-rnn without OpenMP: kernels will run "
        "single-threaded.\n"
        f"Reason: {reason}\n"
        f"{bar}\n",
        file=sys.stderr,
    )


class BuildExt(build_ext):
    """build_ext that adds optimisation and (when available) OpenMP flags."""

    def build_extensions(self):
        compiler_type = self.compiler.compiler_type
        if _env_flag("SKLEARN_RNN_NO_OPENMP"):
            use_openmp = False
            warn_no_openmp("SKLEARN_RNN_NO_OPENMP is set.")
        elif check_openmp_support():
            use_openmp = True
        else:
            use_openmp = False
            warn_no_openmp(
                "the C compiler does not accept -fopenmp (or cannot link the "
                "OpenMP runtime). Install an OpenMP-capable compiler and rebuild "
                "for multi-threaded kernels."
            )

        # -fno-math-errno: we never read errno, and it lets math calls vectorise
        opt_flags = ["/O2"] if compiler_type == "msvc" else ["-O3", "-fno-math-errno"]
        omp_compile, omp_link = openmp_flags(compiler_type) if use_openmp else ([], [])
        use_libmvec = compiler_type != "msvc" and check_libmvec_support()
        if not use_libmvec:
            print("sklearn-rnn: glibc's libmvec is not available; gate "
                  "non-linearities use scalar libm calls (slower).", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args = opt_flags + omp_compile + ext.extra_compile_args
            ext.extra_link_args = omp_link + ext.extra_link_args
            if use_libmvec:
                ext.define_macros.append(("SKLEARN_RNN_LIBMVEC", "1"))
                ext.libraries = ["mvec", "m"] + list(ext.libraries)
        super().build_extensions()


def make_extensions():
    sources = sorted(glob.glob(os.path.join("pyx_rnn", "*.pyx")))
    extensions = [
        Extension(
            "pyx_rnn." + os.path.splitext(os.path.basename(path))[0],
            sources=[path],
            include_dirs=[np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for path in sources
    ]
    return cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


if __name__ == "__main__":
    os.chdir(HERE)
    setup(ext_modules=make_extensions(), cmdclass={"build_ext": BuildExt})
