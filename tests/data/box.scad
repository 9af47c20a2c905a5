// A parametric box: openscad -D size=25 box.scad sets its edge (mm).
size = 10;
cube(size);
