"""pixpro-of: pixel-level contrastive pretraining of driving videos with optical flow."""

from setuptools import find_packages, setup

setup(
    name="pixpro-of",
    version="0.1.0",
    description="PixPro + optical flow pretraining on driving videos, HDF5 shards, and cluster launchers",
    python_requires=">=3.11",  # tomllib (launcher.clusters)
    packages=find_packages(
        include=[
            "pixpro_of",
            "pixpro_of.*",
            "flow",
            "flow.*",
            "hdf5_tools",
            "hdf5_tools.*",
            "launcher",
            "launcher.*",
            "plumbing",
            "plumbing.*",
            "synth",
            "synth.*",
        ]
    )
    + ["pixpro_of.configs", "launcher.templates", "launcher.profiles"],
    # templates/ and configs/ live at the top of the checkout (the design fixes the
    # layout) and install as package data under launcher/ and pixpro_of/.
    package_dir={
        "launcher.templates": "templates",
        "launcher.profiles": "configs/clusters",
        "pixpro_of.configs": "configs/train",
    },
    package_data={
        "launcher.templates": ["*.j2", "*.sh", "**/*.j2"],
        "launcher.profiles": ["*.toml", "*.yaml", "*.json"],
        "pixpro_of.configs": ["*.toml", "*.yaml", "*.json"],
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.23",
        "h5py>=3.8",
        "jinja2>=3.1",
        "click>=8.1",
        "opencv-python-headless>=4.8",
        "pillow>=9",
        "tqdm>=4.60",
        "mpi4py>=3.1",
        "pyyaml>=6",
        "av>=11",
        "simplejpeg>=1.7",
        "tensorboard>=2.12",
        "cityscapesscripts>=2.2",
    ],
    extras_require={
        # pinned linters: a newer ruff may format differently, a newer mypy may find more
        "test": ["pytest>=7", "pytest-timeout>=2", "ruff==0.17.6", "mypy==2.4.1"],
    },
    entry_points={
        "console_scripts": [
            "launcher=launcher.cli:main",
            "hdf5_tools=hdf5_tools.cli:main",
            "pixpro_of=pixpro_of.__main__:main",
            "pixpro-flow=flow.__main__:main",
        ]
    },
)
