// Previews of a finished task's result, shown in the task view:
//   .stl (ASCII or binary) and .off  -> a three.js view (rotate, zoom, pan)
//   .gcode / .gco / .g               -> gcode-preview with a layer slider
//   .png / .jpg / .jpeg              -> an <img>
// The result is fetched through the page's `api` (it sends the token: a
// plain <img src> or loader URL could not) and shown from memory or a blob:
// URL.  three.js and gcode-preview are loaded only when a record needs
// them, so a task view without a model costs no megabyte of script.
// Nothing from the record or the file becomes markup: elements are made
// with createElement and text set with textContent.

const VENDOR = new URL('../vendor/', import.meta.url);

// Larger results are not previewed: the whole file is read into the page,
// and a phone has little memory (a download still works).
const MAX_MODEL_BYTES = 64 * 1024 * 1024;
const MAX_GCODE_BYTES = 48 * 1024 * 1024;
const MAX_IMAGE_BYTES = 32 * 1024 * 1024;
// An OFF file claiming more than this is refused before any array is made
// (a count is just a number in its header).
const MAX_OFF_ELEMENTS = 20000000;

const KINDS = {stl: 'model', off: 'model', gcode: 'gcode', gco: 'gcode', g: 'gcode',
               png: 'image', jpg: 'image', jpeg: 'image'};

const BACKGROUND = 0xf2f3f5;
const MODEL_COLOUR = 0xe8912d;

/** The kind of preview a record's result gets: 'model', 'gcode', 'image' or null. */
export function previewKind(record) {
  const out = record && typeof record.out === 'string' ? record.out : '';
  const match = /\.([A-Za-z0-9]+)$/.exec(out);
  return match ? KINDS[match[1].toLowerCase()] || null : null;
}

/**
 * Show a preview of `record`'s result in `container`; resolves to a
 * function that removes it and frees what it holds (the WebGL context,
 * blob: URLs, observers).  A record without a previewable result, or one
 * not complete yet (its result may be half written), gets nothing (the
 * function is then a no-op).  A result that cannot be shown gets a short
 * note instead; showPreview does not reject for it.
 */
export async function showPreview(container, record, api) {
  const kind = previewKind(record);
  if (!kind || (record.status && record.status !== 'complete')) {
    return () => {};
  }
  const box = element('div', {class: `preview preview-${kind}`});
  container.append(box);
  const name = record.out.split('/').pop();
  // A large result takes a while to come: say so meanwhile.
  const loading = element('p', {class: 'preview-note', 'data-preview': 'loading'}, `Loading a preview of ${name}…`);
  box.append(loading);
  let disposeView = () => {};
  try {
    const show = {model: showModel, gcode: showGcode, image: showImage}[kind];
    disposeView = await show(box, record.out, name, api);
    loading.remove();
  } catch (error) {
    console.warn('preview of', name, 'failed:', error);
    box.replaceChildren(element('p', {class: 'preview-note', 'data-preview': 'note'},
                                    `No preview of ${name}: ${error.message || error}`));
  }
  if (!box.isConnected) {
    // The task view was left (its container emptied) while the result
    // loaded: nobody will call the function returned, so free it now.
    disposeView();
    return () => {};
  }
  let disposed = false;
  return () => {
    if (disposed) return;
    disposed = true;
    disposeView();
    box.remove();
  };
}

// -- helpers -------------------------------------------------------------

function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

/** A canvas filling a box of the given shape, that keeps its shape as the page's width changes. */
function canvasBox(box, marker, label) {
  const frame = element('div', {class: 'preview-frame'});
  // A 4:3 frame, never taller than most of the window (a phone held sideways).
  Object.assign(frame.style, {position: 'relative', width: '100%', aspectRatio: '4 / 3',
                              maxHeight: '60vh', touchAction: 'none'});
  const canvas = element('canvas', {'data-preview': marker, 'aria-label': label, role: 'img', tabindex: '0'});
  Object.assign(canvas.style, {display: 'block', width: '100%', height: '100%'});
  frame.append(canvas);
  box.append(frame);
  return canvas;
}

async function fetchLimited(api, url, limit, as) {
  const blob = await api.fetchBlob(url);
  if (blob.size > limit) {
    throw new Error(`${(blob.size / 1048576).toFixed(0)} MB is too large to preview (download it)`);
  }
  return as === 'text' ? blob.text() : as === 'buffer' ? blob.arrayBuffer() : blob;
}

/** Call `resized` when the element's size changes (not for the first size: the caller draws that). */
function onResize(target, resized) {
  let first = true;
  const observer = new ResizeObserver(() => {
    if (first) { first = false; return; }
    resized();
  });
  observer.observe(target);
  return () => observer.disconnect();
}

// -- images --------------------------------------------------------------

async function showImage(box, url, name, api) {
  const blob = await fetchLimited(api, url, MAX_IMAGE_BYTES, 'blob');
  const src = URL.createObjectURL(blob);
  const image = element('img', {'data-preview': 'image', alt: name});
  Object.assign(image.style, {maxWidth: '100%', height: 'auto'});
  const loaded = new Promise((resolve, reject) => {
    image.onload = resolve;
    image.onerror = () => reject(new Error('the image cannot be read'));
  });
  image.src = src;
  box.append(image);
  try {
    await loaded;
  } catch (error) {
    URL.revokeObjectURL(src);
    throw error;
  }
  return () => URL.revokeObjectURL(src);
}

// -- models: STL and OFF -------------------------------------------------

/**
 * Triangles of an OFF file (as OpenSCAD writes it: "OFF", then
 * "vertices faces edges", the vertices' x y z, then each face as its
 * count and indices, maybe followed by a colour) as a flat array of
 * x,y,z for each corner; a face of more than three corners is cut into a
 * fan.  Throws for anything else.
 */
export function parseOff(text) {
  const lines = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/#.*/, '').trim();
    if (line) lines.push(line);
  }
  if (!lines.length || !/^[CN]*OFF\b/.test(lines[0])) throw new Error('not an OFF file');
  // The counts follow on the header's own line in some writers.
  let at = 0;
  let counts = lines[0].split(/\s+/).slice(1);
  if (!counts.length) {
    at = 1;
    counts = (lines[1] || '').split(/\s+/);
  }
  const vertexCount = Number(counts[0]);
  const faceCount = Number(counts[1]);
  if (!Number.isInteger(vertexCount) || !Number.isInteger(faceCount) || vertexCount < 0 || faceCount < 0
      || vertexCount > MAX_OFF_ELEMENTS || faceCount > MAX_OFF_ELEMENTS) {
    throw new Error('bad OFF counts');
  }
  const first = at + 1;
  if (lines.length < first + vertexCount + faceCount) throw new Error('OFF file cut short');
  const vertices = new Float64Array(vertexCount * 3);
  for (let i = 0; i < vertexCount; i++) {
    const words = lines[first + i].split(/\s+/);
    for (let k = 0; k < 3; k++) {
      const value = Number(words[k]);
      if (!Number.isFinite(value)) throw new Error(`bad OFF vertex ${i}`);
      vertices[i * 3 + k] = value;
    }
  }
  const corners = [];
  for (let f = 0; f < faceCount; f++) {
    const words = lines[first + vertexCount + f].split(/\s+/).map(Number);
    const n = words[0];
    if (!Number.isInteger(n) || n < 3 || words.length < n + 1) throw new Error(`bad OFF face ${f}`);
    for (let k = 1; k <= n; k++) {
      if (!Number.isInteger(words[k]) || words[k] < 0 || words[k] >= vertexCount) {
        throw new Error(`bad OFF face ${f}`);
      }
    }
    for (let k = 2; k < n; k++) corners.push(words[1], words[k], words[k + 1]);
  }
  const positions = new Float32Array(corners.length * 3);
  corners.forEach((index, i) => {
    positions[i * 3] = vertices[index * 3];
    positions[i * 3 + 1] = vertices[index * 3 + 1];
    positions[i * 3 + 2] = vertices[index * 3 + 2];
  });
  return positions;
}

async function loadGeometry(THREE, url, api) {
  const buffer = await fetchLimited(api, url, MAX_MODEL_BYTES, 'buffer');
  if (/\.off$/i.test(url)) {
    const geometry = new THREE.BufferGeometry();
    geometry.setAttribute('position', new THREE.BufferAttribute(parseOff(new TextDecoder().decode(buffer)), 3));
    geometry.computeVertexNormals();  // unshared corners: flat faces, as a printed part looks
    return geometry;
  }
  const {STLLoader} = await import(new URL('STLLoader.js', VENDOR).href);
  try {
    return new STLLoader().parse(buffer);  // tells ASCII from binary itself
  } catch (error) {
    // The loader reads a short or cut binary file past its end: say what the user has.
    throw new Error('not a readable STL file');
  }
}

/** A round step for a grid of about ten lines over `size` (1, 2 or 5 times a power of ten). */
function gridStep(size) {
  const rough = Math.max(size, 1e-3) / 10;
  const power = 10 ** Math.floor(Math.log10(rough));
  return [1, 2, 5, 10].map(k => k * power).find(step => step >= rough);
}

async function showModel(box, url, name, api) {
  const THREE = await import('three');
  const {OrbitControls} = await import(new URL('OrbitControls.js', VENDOR).href);
  const geometry = await loadGeometry(THREE, url, api);
  if (!geometry.getAttribute('position') || geometry.getAttribute('position').count === 0) {
    geometry.dispose();
    throw new Error('the model has no faces');
  }
  const canvas = canvasBox(box, '3d', `3D view of ${name}: drag or Shift+arrows to turn, wheel or pinch to zoom`);

  // OpenSCAD's models are Z-up, standing on the plate at z = 0: the model
  // is moved so that its footprint is centred on the origin and its
  // bottom on the grid, and the camera's up is Z.
  geometry.computeBoundingBox();
  const bounds = geometry.boundingBox;
  const centre = bounds.getCenter(new THREE.Vector3());
  geometry.translate(-centre.x, -centre.y, -bounds.min.z);
  geometry.computeBoundingSphere();
  const size = bounds.getSize(new THREE.Vector3());
  const sphere = geometry.boundingSphere;

  const scene = new THREE.Scene();
  scene.background = new THREE.Color(BACKGROUND);
  const material = new THREE.MeshStandardMaterial({color: MODEL_COLOUR, roughness: 0.55, metalness: 0.05,
                                                   side: THREE.DoubleSide});
  scene.add(new THREE.Mesh(geometry, material));

  const span = Math.max(size.x, size.y) * 1.6;
  const step = gridStep(span);
  const cells = Math.max(2, Math.ceil(span / step / 2) * 2);
  const grid = new THREE.GridHelper(cells * step, cells, 0x9aa0a8, 0xc8ccd2);
  grid.rotation.x = Math.PI / 2;  // GridHelper lies in XZ; the plate is XY
  scene.add(grid);

  // Light from the sky, a little from below, and a lamp on the camera, so
  // the face turned to the viewer is always lit whichever way it turns.
  scene.add(new THREE.HemisphereLight(0xffffff, 0x8d8d8d, 1.6));
  const camera = new THREE.PerspectiveCamera(35, 4 / 3, 1, 1000);
  camera.up.set(0, 0, 1);
  const lamp = new THREE.DirectionalLight(0xffffff, 1.8);
  lamp.position.set(0.4, 0.6, 1);
  camera.add(lamp);
  scene.add(camera);

  // Framed: the bounding sphere fits the narrower of the two view angles.
  const radius = Math.max(sphere.radius, 1e-3);
  const halfAngle = THREE.MathUtils.degToRad(camera.fov / 2);
  const distance = radius / Math.sin(Math.min(halfAngle, Math.atan(Math.tan(halfAngle) * camera.aspect))) * 1.3;
  camera.position.copy(sphere.center).add(new THREE.Vector3(1, -1.4, 1).normalize().multiplyScalar(distance));
  camera.near = distance / 100;
  camera.far = distance * 100;
  camera.updateProjectionMatrix();

  // preserveDrawingBuffer: the picture stays readable after it is shown
  // (a right-click "save image", a test's toDataURL).
  const renderer = new THREE.WebGLRenderer({canvas, antialias: true, preserveDrawingBuffer: true});
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  const controls = new OrbitControls(camera, canvas);
  controls.target.copy(sphere.center);
  controls.minDistance = radius * 0.2;
  controls.maxDistance = distance * 20;
  // The keyboard too (the canvas takes focus): arrows move the view,
  // with Shift (or Ctrl) they turn it.
  controls.listenToKeyEvents(canvas);
  controls.update();

  // Drawn on demand (a move of the controls, a new size), not in a loop:
  // an idle preview costs no CPU.
  const draw = () => renderer.render(scene, camera);
  const fit = () => {
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (!width || !height) return;
    renderer.setSize(width, height, false);
    camera.aspect = width / height;
    camera.updateProjectionMatrix();
    draw();
  };
  controls.addEventListener('change', draw);
  const unobserve = onResize(canvas, fit);
  fit();

  return () => {
    unobserve();
    controls.removeEventListener('change', draw);
    controls.dispose();
    geometry.dispose();
    material.dispose();
    grid.geometry.dispose();
    grid.material.dispose();
    renderer.dispose();
    // Browsers keep only a few WebGL contexts: give this one back now
    // rather than when the canvas is collected.
    renderer.forceContextLoss();
  };
}

// -- G-code --------------------------------------------------------------

/** The extents of the moves in the parsed G-code (x, y): where the print lies on the plate. */
function gcodeExtents(layers) {
  let maxX = 0, maxY = 0;
  for (const layer of layers) {
    for (const command of layer.commands) {
      const {x, y} = command.params || {};
      if (Number.isFinite(x)) maxX = Math.max(maxX, x);
      if (Number.isFinite(y)) maxY = Math.max(maxY, y);
    }
  }
  return {maxX, maxY};
}

/** A plate a little larger than the print, in 10 mm steps, at least 200 x 200 mm (a usual printer's). */
function plateFor(extents) {
  const round = value => Math.max(200, Math.ceil(value / 10) * 10);
  return {x: round(extents.maxX), y: round(extents.maxY), z: 0};
}

async function showGcode(box, url, name, api) {
  const text = await fetchLimited(api, url, MAX_GCODE_BYTES, 'text');
  const THREE = await import('three');
  const {WebGLPreview} = await import(new URL('gcode-preview.js', VENDOR).href);
  const canvas = canvasBox(box, 'gcode', `G-code of ${name}: drag or Shift+arrows to turn, wheel or pinch to zoom`);
  const preview = new WebGLPreview({canvas, backgroundColor: BACKGROUND, extrusionColor: MODEL_COLOUR,
                                    topLayerColor: 0xc0392b, renderTravel: false});
  // gcode-preview 2.18 draws every animation frame for as long as it
  // lives; drawn on demand instead (the controls' moves, a layer, a
  // size), a preview left open costs no CPU.
  preview.cancelAnimation();
  const draw = () => preview.renderer.render(preview.scene, preview.camera);
  preview.controls.addEventListener('change', draw);
  preview.controls.listenToKeyEvents(canvas);  // arrows move, Shift+arrows turn (the canvas takes focus)

  preview.parser.parseGCode(text);
  const layerCount = preview.parser.layers.length;
  if (!layerCount) {
    preview.dispose();
    throw new Error('the G-code has no layers');
  }
  preview.buildVolume = plateFor(gcodeExtents(preview.parser.layers));
  // endLayer counts the parser's preamble (what comes before the first
  // layer) as layer 1: the file's layer N ends at N + 1.
  preview.endLayer = layerCount + 1;
  preview.render();
  frameGcode(THREE, preview);
  draw();

  const slider = layerSlider(box, layerCount, shown => {
    preview.endLayer = shown + 1;
    preview.render();
    draw();
  });
  const unobserve = onResize(canvas, () => {
    if (!canvas.clientWidth || !canvas.clientHeight) return;
    preview.resize();
    draw();
  });
  return () => {
    unobserve();
    slider.remove();
    preview.controls.removeEventListener('change', draw);
    preview.dispose();
    preview.renderer.forceContextLoss();
  };
}

/** Turn gcode-preview's camera (fixed for a 200 mm plate) to the print itself, from the front and above. */
function frameGcode(THREE, preview) {
  const bounds = new THREE.Box3().setFromObject(preview.group);
  if (bounds.isEmpty()) return;
  const sphere = bounds.getBoundingSphere(new THREE.Sphere());
  const camera = preview.camera;
  const distance = Math.max(sphere.radius, 5) / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2)) * 1.1;
  // gcode-preview's world is Y-up with the plate's front toward +Z.
  camera.position.copy(sphere.center).add(new THREE.Vector3(-0.5, 0.9, 1.2).normalize().multiplyScalar(distance));
  preview.controls.target.copy(sphere.center);
  preview.controls.update();
}

function layerSlider(box, count, show) {
  const row = element('label', {class: 'preview-layers'});
  Object.assign(row.style, {display: 'flex', gap: '0.6em', alignItems: 'center', marginTop: '0.4em'});
  const caption = element('span', {'data-preview': 'layer-text'});
  const input = element('input', {type: 'range', min: '1', max: String(count), step: '1', value: String(count),
                                  'data-preview': 'layer', 'aria-label': 'last layer shown'});
  input.style.flex = '1';
  const say = () => { caption.textContent = `layer ${input.value} of ${count}`; };
  say();
  input.addEventListener('input', () => {
    say();
    show(Number(input.value));
  });
  row.append(caption, input);
  box.append(row);
  return row;
}
