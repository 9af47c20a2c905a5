"""pip install . -> the rrcloud command, the *.cloud wrappers, default services and config."""
import glob

from setuptools import setup

WRAPPED = ['openscad', 'openjscad', 'slic3r', 'povray', 'printrun']

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
                ('share/rrcloud/www', sorted(glob.glob('www/*'))),
                ('share/rrcloud', ['rrcloudrc'])],
)
