"""pip install . -> the rrcloud command, the *.cloud wrappers, default services and config."""
import glob
import os

from setuptools import setup

from rrc.web.assets import VENDOR

WRAPPED = ['openscad', 'openjscad', 'slic3r', 'povray', 'printrun']



def www_files():
    """(folder, files) pairs of the page's files below share/rrcloud/www,
    folder by folder (data_files takes files only), without npm's package
    files and www/node_modules but the libraries the page loads from it (rrc/web/assets.VENDOR)."""
    pairs = []
    for folder, folders, files in os.walk('www'):
        folders[:] = sorted(f for f in folders if f != 'node_modules')
        if files:
            shipped = sorted(os.path.join(folder, f) for f in files if not f.startswith('package'))
            pairs.append((os.path.join('share/rrcloud', folder), shipped))
    for _, below in VENDOR:
        path = os.path.join('www', 'node_modules', below)
        if os.path.exists(path):
            pairs.append((os.path.join('share/rrcloud', os.path.dirname(path)), [path]))
    return pairs


setup(
    name='rrcloud',
    version='0.1.0',
    description='Relay 3D-printing compute work (OpenSCAD, OpenJSCAD, Slic3r, POV-Ray, '
                'printing) to one or many servers; a Python port of RepRapCloud 0.019',
    py_modules=['rrcloud'],
    packages=['rrc', 'rrc.web', 'rrc.cli'],
    python_requires='>=3.9',
    install_requires=[
        'requests>=2.25',
        'psutil>=5.8',
        'pyserial>=3.5',
        'multipart>=1.0',
        'waitress>=2.1',
        'redis>=5',
        'rq>=2,<3',
    ],
    entry_points={'console_scripts': ['rrcloud=rrcloud:main']
                  + [f'{name}.cloud=rrcloud:main' for name in WRAPPED]},
    data_files=[('share/rrcloud/services', sorted(glob.glob('services/*.conf') + glob.glob('services/*.keys')
                                                     + glob.glob('services/*.sandbox')
                                                     + glob.glob('services/*.options')
                                                     + glob.glob('services/*.mjs'))),
                *www_files(),
                ('share/rrcloud', ['rrcloudrc'])],
)
