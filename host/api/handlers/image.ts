/** The image.* methods: thin adapters from validated params onto the image manager. */
import type { ImageManager } from '../../images/manager.js';
import type { Handlers, Planners } from '../types.js';

export interface ImageHandlerDeps {
  imageManager: ImageManager;
}

type ImageMethods = 'image.list' | 'image.get' | 'image.delete' | 'image.build' | 'image.import';

export const imageHandlers = ({
  imageManager: images,
}: ImageHandlerDeps): Handlers<ImageMethods> => ({
  'image.list': async () => ({ images: await images.list() }),
  'image.get': (p) => images.get(p.image),
  'image.delete': async (p) => {
    await images.delete(p.image);
    return {};
  },
  'image.build': (p) => images.build(p.recipe, p.noCache === true),
  'image.import': (p) => images.import(p),
});

/** Dry runs (protocol/plan.ts): the same checks as the handlers, a plan, no change. */
export const imagePlanners = ({
  imageManager: images,
}: ImageHandlerDeps): Planners<'image.delete' | 'image.build' | 'image.import'> => ({
  'image.delete': (p) => images.plan.delete(p.image),
  'image.build': (p) => images.plan.build(p.recipe),
  'image.import': (p) => images.plan.import(p),
});
