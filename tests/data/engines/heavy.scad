// a plate with rounded edges (minkowski) and 18 holes
difference() {
  minkowski() { cube([30, 30, 4], center = true); sphere(2, $fn = 48); }
  for (i = [0:17]) rotate([0, 0, i * 20]) translate([10, 0, 0]) cylinder(h = 20, r = 1.5, center = true, $fn = 32);
  for (i = [0:5]) rotate([0, 0, i * 60 + 10]) translate([5, 0, 0]) sphere(2.5, $fn = 32);
}
