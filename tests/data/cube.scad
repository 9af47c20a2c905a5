// A 10 mm cube: volume 1000 mm^3.
cube(10);
