// A red sphere on a checkered plane
camera { location <0, 2, -5> look_at <0, 0.5, 0> }
light_source { <5, 10, -10> color rgb 1 }
sphere { <0, 1, 0>, 1 pigment { color rgb <1, 0, 0> } finish { phong 0.8 } }
plane { y, 0 pigment { checker color rgb 1 color rgb 0.2 } }
