// A model that takes OpenSCAD (CGAL) a few seconds to render.
difference() {
  sphere(r=20, $fn=96);
  for (i = [0:23]) rotate([0, 0, i * 15]) translate([12, 0, 0]) cylinder(h=50, r=3, center=true, $fn=32);
}
