"""The class lists of the benchmarks, as their datasets name and number them (data only; `ClassList`
presets are built from these in `offline_seg.classes`)."""

VOC = (
    "background, aeroplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, dining-table, dog, "
    "horse, motorbike, person, potted-plant, sheep, sofa, train, monitor"
)
CITYSCAPES = (
    "background, road, sidewalk, building, wall, fence, pole, traffic-light, traffic-sign, tree, terrain, "
    "sky, person, rider, car, truck, bus, train, motorcycle, bicycle"
)
CITYSCAPES_IDS = (0, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
# COCO-81: `unlabeled` plus the 80 thing classes with their (non-contiguous) COCO category ids.
COCO81_ENTRIES = (
    (0, "unlabeled"), (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
    (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic-light"), (11, "fire-hydrant"),
    (13, "stop-sign"), (14, "parking-meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"),
    (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports-ball"), (38, "kite"),
    (39, "baseball-bat"), (40, "baseball-glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis-racket"), (44, "bottle"), (46, "wine-glass"), (47, "cup"), (48, "fork"), (49, "knife"),
    (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot-dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted-plant"), (65, "bed"), (67, "dining-table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell-phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy-bear"), (89, "hair-drier"),
    (90, "toothbrush"),
)
# Long-list benchmarks. Their label maps give no pixel to a "background" class, so the background here has
# no dataset id (NO_ID): the ground truth's void (ADE20K and Pascal Context 0, COCO-Stuff 255) is ignored, as in
# the standard protocols, and the background only names the pixels no detection covers.
# ADE20K (SceneParsing, ADEChallengeData2016): ids 1..150 in objectInfo150 order, 0 = other (void).
ADE20K_150 = (
    "wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet, sidewalk, person, earth, "
    "door, table, mountain, plant, curtain, chair, car, water, painting, sofa, shelf, house, sea, mirror, rug, "
    "field, armchair, seat, fence, desk, rock, wardrobe, lamp, bathtub, railing, cushion, base, box, column, "
    "signboard, chest of drawers, counter, sand, sink, skyscraper, fireplace, refrigerator, grandstand, path, "
    "stairs, runway, case, pool table, pillow, screen door, stairway, river, bridge, bookcase, blind, "
    "coffee table, toilet, flower, book, hill, bench, countertop, stove, palm, kitchen island, computer, "
    "swivel chair, boat, bar, arcade machine, hovel, bus, towel, light, truck, tower, chandelier, awning, "
    "streetlight, booth, television receiver, airplane, dirt track, apparel, pole, land, bannister, escalator, "
    "ottoman, bottle, buffet, poster, stage, van, ship, fountain, conveyer belt, canopy, washer, plaything, "
    "swimming pool, stool, barrel, basket, waterfall, tent, bag, minibike, cradle, oven, ball, food, step, tank, "
    "trade name, microwave, pot, animal, bicycle, lake, dishwasher, screen, blanket, sculpture, hood, sconce, "
    "vase, traffic light, tray, ashcan, fan, pier, crt screen, plate, monitor, bulletin board, shower, "
    "radiator, glass, clock, flag"
)
# COCO-Stuff-171 (stuffthingmaps): pixel value = COCO category id - 1; 80 things (0..89, with gaps) and
# 91 stuff classes (91..181); 255 = unlabeled.
COCO_STUFF_STUFF = (
    "banner, blanket, branch, bridge, building-other, bush, cabinet, cage, cardboard, carpet, ceiling-other, "
    "ceiling-tile, cloth, clothes, clouds, counter, cupboard, curtain, desk-stuff, dirt, door-stuff, fence, "
    "floor-marble, floor-other, floor-stone, floor-tile, floor-wood, flower, fog, food-other, fruit, "
    "furniture-other, grass, gravel, ground-other, hill, house, leaves, light, mat, metal, mirror-stuff, moss, "
    "mountain, mud, napkin, net, paper, pavement, pillow, plant-other, plastic, platform, playingfield, "
    "railing, railroad, river, road, rock, roof, rug, salad, sand, sea, shelf, sky-other, skyscraper, snow, "
    "solid-other, stairs, stone, straw, structural-other, table, tent, textile-other, towel, tree, vegetable, "
    "wall-brick, wall-concrete, wall-other, wall-panel, wall-stone, wall-tile, wall-wood, water-other, "
    "waterdrops, window-blind, window-other, wood"
)
# Pascal Context-59 (the 59 most frequent classes of the 459; label maps in the common 59-class format:
# ids 1..59 in this order, 0 = the other 400 classes and background, ignored).
PASCAL_CONTEXT_59 = (
    "aeroplane, bag, bed, bedclothes, bench, bicycle, bird, boat, book, bottle, building, bus, cabinet, car, "
    "cat, ceiling, chair, cloth, computer, cow, cup, curtain, dog, door, fence, floor, flower, food, grass, "
    "ground, horse, keyboard, light, motorbike, mountain, mouse, person, plate, platform, potted-plant, road, "
    "rock, sheep, shelves, sidewalk, sign, sky, snow, sofa, table, track, train, tree, truck, tv-monitor, wall, "
    "water, window, wood"
)
DRAM = "background, bird, boat, bottle, cat, chair, cow, dog, horse, person, potted-plant, sheep"
DRAM_IDS = (0, 3, 4, 5, 8, 9, 10, 12, 13, 15, 16, 17)
