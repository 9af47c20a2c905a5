difference() { sphere(20, $fn=60); for (i = [0:2]) rotate([0, 0, i * 120]) translate([12, 0, 0]) sphere(6, $fn=40); }
