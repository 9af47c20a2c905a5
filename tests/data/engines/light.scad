// a plain cube: the light model
cube([10, 8, 6]);
