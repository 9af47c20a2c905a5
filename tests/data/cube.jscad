// OpenJSCAD V1: a 10 mm cube with a hole
function main() {
  return difference(cube({size: 10}), cylinder({r: 2, h: 10}));
}
