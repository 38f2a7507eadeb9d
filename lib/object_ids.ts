/**
 * Small stable numbers for objects, by identity: keys for caches that must tell objects apart
 * without holding them (the numbers are never reused; the objects can still be collected).
 * @module
 */

/** A numbering of objects of type `T`: the same object always gets the same number. */
export function objectIds<T extends object>(): (o: T) => number {
  const ids = new WeakMap<T, number>();
  let next = 0;
  return (o) => {
    let id = ids.get(o);
    if (id === undefined) ids.set(o, id = next++);
    return id;
  };
}
