// a few booleans on curved solids
difference() { sphere(10, $fn = 64); for (a = [0:45:135]) rotate([0, 0, a]) cylinder(h = 30, r = 2, center = true, $fn = 32); }
