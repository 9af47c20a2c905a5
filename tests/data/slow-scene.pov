// A scene that takes POV-Ray a few seconds: focal blur, many samples.
#version 3.7;
global_settings { assumed_gamma 1.0 }
camera { location <0, 2, -5> look_at <0, 0.5, 0> focal_point <0, 1, 0> aperture 0.4 blur_samples 400 }
light_source { <5, 10, -10> color rgb 1 }
sphere { <0, 1, 0>, 1 pigment { color rgb <1, 0, 0> } finish { phong 0.8 reflection 0.3 } }
plane { y, 0 pigment { checker color rgb 1 color rgb 0.2 } finish { reflection 0.2 } }
