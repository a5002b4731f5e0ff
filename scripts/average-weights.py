# Averages safetensors weights files of one model (all tensors f32, same names and shapes):
# the "model soup" of runs trained from one start. Usage: average-weights.py OUT IN1 IN2 ...
import json, struct, sys
import numpy as np
out, ins = sys.argv[1], sys.argv[2:]
def load(p):
    b = open(p, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8+n]); data = b[8+n:]
    meta = h.pop('__metadata__', None)
    t = {}
    for k, v in h.items():
        assert v['dtype'] == 'F32', (k, v['dtype'])
        s, e = v['data_offsets']
        t[k] = np.frombuffer(data[s:e], dtype='<f4').reshape(v['shape'])
    return t, meta
ts = [load(p) for p in ins]
names = sorted(ts[0][0])
assert all(sorted(t[0]) == names for t in ts)
avg = {k: np.mean([t[0][k] for t in ts], axis=0).astype('<f4') for k in names}
hdr, off, blobs = {}, 0, []
for k in names:
    b = avg[k].tobytes(); hdr[k] = {'dtype': 'F32', 'shape': list(avg[k].shape), 'data_offsets': [off, off+len(b)]}
    off += len(b); blobs.append(b)
if ts[0][1]: hdr['__metadata__'] = ts[0][1]
hj = json.dumps(hdr, separators=(',', ':')).encode()
hj += b' ' * ((8 - len(hj) % 8) % 8)
with open(out, 'wb') as f:
    f.write(struct.pack('<Q', len(hj))); f.write(hj); [f.write(b) for b in blobs]
print(out, len(names), 'tensors')
