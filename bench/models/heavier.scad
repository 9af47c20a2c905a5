// a plate with rounded edges (minkowski), 36 holes and 12 dimples: the heaviest model
difference() {
  minkowski() { cube([40, 40, 4], center = true); sphere(2, $fn = 64); }
  for (i = [0:35]) rotate([0, 0, i * 10]) translate([15, 0, 0]) cylinder(h = 20, r = 1.2, center = true, $fn = 32);
  for (i = [0:11]) rotate([0, 0, i * 30 + 5]) translate([8, 0, 0]) sphere(2.5, $fn = 32);
}
