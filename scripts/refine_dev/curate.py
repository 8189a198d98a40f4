#!/usr/bin/env python
"""Curate the drafts of `candidates.py` into `post.tsv`: the hand choices (what the annotation guidelines
support, what they leave ambiguous) are the lists in this file; SOURCES.md says where each group comes from.

    for p in voc coco81 cityscapes; do python scripts/refine_dev/candidates.py --preset $p ... > drafts-$p.tsv; done
    python scripts/refine_dev/curate.py drafts-*.tsv --ade objectInfo150.txt > scripts/refine_dev/post.tsv
"""
import argparse
import sys
from pathlib import Path

from offline_seg.classes import ClassList

parser = argparse.ArgumentParser()
parser.add_argument("drafts", nargs="+", type=Path, help="candidates.py outputs: preset, phrase, label, source")
parser.add_argument("--ade", type=Path, required=True, help="ADE20K's objectInfo150.txt (its name column)")
args = parser.parse_args()
rows = {}
for path in args.drafts:
    for line in path.read_text(encoding="utf-8").splitlines():
        preset, phrase, label, source = line.split("\t")
        rows.setdefault((preset, phrase), (label, source))
out = []
def add(preset, phrase, label, source):
    cl = ClassList.preset(preset)
    if cl.match(phrase) is not None:
        return  # exact matches never reach the embedding
    if label != "background":
        assert label in cl.names, (preset, label)
    out.append((preset, phrase, label, source))

DROP = set("""bonsai|beef|jet ski|sea scooter|water scooter|sofa bed|shipwreck|gourd|jug|water jug|canteen|flask|decanter|poultry|throne|launch|gig|charger|mollymawk|paraquet|paroquet|parrakeet|parroket|parroquet|seafowl|cocker|monitor (computer equipment) computer monitor|chaise|lounge|pug-dog|submarine|day bed|charabanc|autobus|monocycle|dory|pilot boat|cargo vessel|gondola|transporter|trucking rig|police van|cruiser|chili dog|glove|wheelchair|urn|folder|leaflet|brochure|pamphlet|booklet|bola|bola tie|crapper|potty|window seat|big ben|chalice|clippers|mammoth|bobcat|catamount|cougar|mountain lion|panther|puma|french pancake|crape|crepe|pancake|tortilla|waffle|gingerbread|chocolate chip cookie|dixie cup|grinder|phonebook|telephone book|telephone directory|water ski|architecture|art school|beer garden|bowling alley|chess|grill|home theater|rink|skating rink|ski resort|resort|microphone boom|ski pole|mast|popcorn|cereal|corn|oats|wheat|doll's house|dollhouse|dog house|doghouse|kennel|chicken coop|conference center|heather|trolley|ambulance|alley|driveway|pig|feeding chair|beefburger|cheeseburger|hospital bed|jet-propelled plane|bow-tie|bowtie|flute glass|handbasin|washbowl|washstand|haversack|packsack|steak knife|pocketknife|soupspoon|mixing bowl|soup bowl|timepiece|digital clock|church bench|pew|beachball|seaplane|attack aircraft|fighter aircraft|railroad train|cellular telephone|cellphone|semi truck|tractor trailer|trailer truck|articulated lorry|squad car|police cruiser|patrol car|landrover|motorbus|motorcoach|jet plane|thermos|thermos bottle|persian cat|ferryboat|passenger ship|cargo ship|river boat|pirate ship|barge|houseboat|lifeboat|tugboat|speedboat|warship|battleship|aircraft carrier|water bird|seabird|wood duck|house finch|blue jay|mallard|cormorant|hornbill|puffin|egret|osprey|pug|schnauzer|rottweiler|newfoundland|pomeranian|sheepdog|shepherd dog|guard dog|police dog|doberman|husky|corgi|greyhound|beagle|dachshund|deck chair|reclining chair|chaise longue|beach chair|passenger car|domestic ass|jockey|equestrian|bridecake|submarine sandwich|chocolate cake|cheesecake|brown bear|grizzly|bear cub|clutch bag|shoulder bag|pocketbook|computer mouse|beach ball|police car""".split("|"))
# the trees of fruit and flowering shrubs: WordNet's first sense of a fruit name is often the tree; detector phrases mean the fruit
FRUIT = set("almond apricot bayberry bell pepper blueberry buttonwood cashew clementine cranberry durian grapefruit hawthorn hazelnut hibiscus jasmine jujube lavender lilac litchi macadamia mandarin orange mango mangosteen mulberry nectarine papaya persimmon pistachio plum poinsettia pomegranate rose rowan tangerine azalea hydrangea rhododendron".split(" ")) | {"bell pepper", "mandarin orange"}
CAP = 9
count = {}
for (preset, phrase), (label, source) in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[1][1].startswith("lvis"), len(kv[0][1]), kv[0][1])):
    if label in ("background", "person") or phrase.lower() in DROP or phrase in FRUIT:
        continue
    key = (preset, label)
    if count.get(key, 0) >= CAP:
        continue
    count[key] = count.get(key, 0) + 1
    add(preset, phrase, label, source)

PEOPLE = "man|woman|boy|girl|child|kid|baby|toddler|teenager|lady|gentleman|guy|adult|player|tennis player|baseball player|soccer player|football player|skier|surfer|pedestrian|worker|construction worker|police officer|policeman|soldier|chef|cook|doctor|nurse|student|bride|groom|tourist|businessman|athlete|dancer|farmer|fisherman|passenger|spectator|referee|waiter|musician|singer|hiker|jogger|runner|swimmer|mother|father|grandmother|old man|young woman|infant|shopper".split("|")[:30]
for preset in ("voc", "coco81", "cityscapes"):
    for phrase in PEOPLE:
        hit = rows.get((preset, phrase))
        if preset == "cityscapes" and phrase in ("skier", "surfer", "swimmer", "jogger", "runner", "hiker"):
            continue  # moving by themselves but not street scenes: left out
        if hit and hit[0] == "person":
            add(preset, phrase, "person", hit[1])
for preset, cyc in (("voc", "person"), ("coco81", "person"), ("cityscapes", "rider")):
    for phrase in ("cyclist", "bicyclist", "motorcyclist", "biker", "horseback rider", "jockey", "skateboarder"):
        add(preset, phrase, cyc, "guideline:" + ("cityscapes rider definition" if preset == "cityscapes" else f"{preset} person"))

HAND = {
 "voc": """kitten cat|kitty cat|tabby cat|calf cow|bull cow|ox cow|cattle cow|lamb sheep|ewe sheep|puppy dog|donkey horse|foal horse|pony horse|stallion horse|houseplant potted-plant|indoor plant potted-plant|plant in a pot potted-plant|tv screen monitor|television monitor|flat screen tv monitor|computer screen monitor|computer monitor monitor|scooter motorbike|moped motorbike|motorcycle motorbike|van car|minivan car|people carrier car|hatchback car|station wagon car|taxi car|table dining-table|kitchen table dining-table|breakfast table dining-table|dinner table dining-table|train carriage train|railway carriage train|locomotive train|steam engine train|freight train train|sailboat boat|yacht boat|canoe boat|ship boat|rowing boat boat|ferry boat|pedalo boat|fishing boat boat|jet aeroplane|airliner aeroplane|airplane aeroplane|plane aeroplane|glider aeroplane|bike bicycle|mountain bike bicycle|tricycle bicycle|wine bottle bottle|water bottle bottle|beer bottle bottle|plastic bottle bottle|baby bottle bottle|armchair chair|deckchair chair|rocking chair chair|office chair chair|folding chair chair|couch sofa|loveseat sofa|settee sofa|minibus bus|school bus bus|double-decker bus|coach bus|parrot bird|pigeon bird|seagull bird|duck bird|chicken bird|owl bird|eagle bird|sparrow bird|swan bird|goose bird|penguin bird""",
 "cityscapes": """street road|lane road|roadway road|asphalt road|crosswalk road|highway road|pavement sidewalk|footpath sidewalk|kerb sidewalk|curb sidewalk|traffic island sidewalk|house building|skyscraper building|apartment building building|office building building|garage building|church building|brick wall wall|stone wall wall|concrete wall wall|picket fence fence|wire fence fence|chain link fence fence|lamp post pole|lamppost pole|utility pole pole|telephone pole pole|sign pole pole|signpost pole|traffic signal traffic-light|stoplight traffic-light|street sign traffic-sign|road sign traffic-sign|stop sign traffic-sign|speed limit sign traffic-sign|direction sign traffic-sign|yield sign traffic-sign|palm tree tree|oak tree tree|pine tree tree|hedge tree|bush tree|shrub tree|shrubbery tree|vegetation tree|foliage tree|grass terrain|lawn terrain|soil terrain|dirt terrain|sand terrain|meadow terrain|clouds sky|cloud sky|blue sky sky|cloudy sky sky|overcast sky sky|sedan car|suv car|jeep car|van car|minivan car|taxi car|hatchback car|convertible car|station wagon car|lorry truck|pickup truck truck|box truck truck|garbage truck truck|fire truck truck|delivery truck truck|dump truck truck|coach bus|minibus bus|double-decker bus|school bus bus|city bus bus|tram train|streetcar train|light rail train|subway train train|locomotive train|motorbike motorcycle|scooter motorcycle|moped motorcycle|motor scooter motorcycle|dirt bike motorcycle|bike bicycle|mountain bike bicycle|road bike bicycle|bmx bicycle""",
 "coco81": """kitten cat|tabby cat|puppy dog|calf cow|bull cow|cattle cow|lamb sheep|foal horse|pony horse|mug cup|coffee mug cup|teacup cup|coffee cup cup|doughnut donut|hotdog hot-dog|frankfurter hot-dog|sofa couch|loveseat couch|television tv|flat screen tv tv|television set tv|mobile phone cell-phone|smartphone cell-phone|fridge refrigerator|remote control remote|tv remote remote|laptop computer laptop|notebook computer laptop|microwave oven microwave|hair dryer hair-drier|blow dryer hair-drier|teddy teddy-bear|stuffed bear teddy-bear|wineglass wine-glass|champagne flute wine-glass|soccer ball sports-ball|football sports-ball|tennis ball sports-ball|baseball sports-ball|basketball sports-ball|volleyball sports-ball|ball sports-ball|baseball mitt baseball-glove|ski skis|surf board surfboard|purse handbag|rucksack backpack|knapsack backpack|luggage suitcase|necktie tie|bow tie tie|lorry truck|pickup truck truck|fire truck truck|aeroplane airplane|jet airplane|airliner airplane|sailboat boat|yacht boat|canoe boat|kayak boat|ship boat|traffic signal traffic-light|hydrant fire-hydrant|fireplug fire-hydrant|park bench bench|pigeon bird|seagull bird|duck bird|parrot bird|polar bear bear|grizzly bear bear|hamburger sandwich|sub sandwich sandwich|birthday cake cake|wedding cake cake|cupcake cake|table dining-table|kitchen table dining-table|houseplant potted-plant|flowerpot potted-plant|bunk bed bed|double bed bed|toilet bowl toilet|washbasin sink|kitchen sink sink|novel book|wall clock clock|alarm clock clock|flower vase vase|shears scissors|computer keyboard keyboard|computer mouse mouse|sedan car|taxi car|suv car|jeep car|motorbike motorcycle|moped motorcycle|minibus bus|school bus bus|double-decker bus|locomotive train|passenger train train|armchair chair|rocking chair chair|office chair chair|bike bicycle|mountain bike bicycle|person person|wine bottle bottle|water bottle bottle|beer bottle bottle""",
}
for preset, text in HAND.items():
    have = {p for pr, p, _, _ in out if pr == preset}
    for item in text.split("|"):
        phrase, label = item.rsplit(" ", 1)
        if phrase in have:
            continue
        d = rows.get((preset, phrase))
        src = d[1] if d and d[0] == label else f"guideline:{preset}"
        add(preset, phrase, label, src)
        have.add(phrase)

NEG = {
 "voc": "lamp|table lamp|bookshelf|cabinet|desk|coffee table|stool|pillow|curtain|door|carpet|painting|picture frame|mirror|clock|vase|cup|plate|bowl|laptop|keyboard|umbrella|backpack|handbag|suitcase|guitar|piano|elephant|giraffe|zebra|deer|rabbit|squirrel|butterfly|truck|tractor|helicopter|skateboard|surfboard|frisbee|building|house|road|fire hydrant|bridge|mountain|sky|beach|pizza|cake|banana|apple|sandwich|teddy bear|toilet|sink|refrigerator|oven|bathtub|towel|candle|basket|box|trash can|mailbox|parking meter|billboard|statue|fountain|tent|shelf|blanket|camera|camel|kangaroo|tomato|bread|bench|bed|ladder|bucket|knife|fork|spoon|toothbrush|tennis racket|jellyfish|turtle|dolphin|panda|koala|cheetah|gorilla|bee|spider|mushroom|palm tree|pumpkin|carrot|broccoli|donut",
 "cityscapes": "bench|trash can|mailbox|fire hydrant|parking meter|billboard|statue|fountain|tunnel|bridge|boat|airplane|helicopter|flag|awning|shopping cart|tent|umbrella|horse|chair|table lamp|coffee table|sofa|bed|bottle|cup|plate|bowl|laptop|keyboard|guitar|piano|mountain|beach|elephant|giraffe|zebra|deer|rabbit|squirrel|duck|swan|owl|penguin|pizza|cake|banana|sandwich|teddy bear|toilet|sink|refrigerator|oven|bathtub|towel|candle|basket|camera|ladder|bucket|scissors|knife|fork|spoon|toothbrush|tennis racket|baseball bat|surfboard|snowboard|frisbee|kite|butterfly|bee|mushroom|pumpkin|carrot|broccoli|donut|jellyfish|turtle|dolphin|kitten|panda|koala|gorilla|clock|vase|mirror|painting|pillow|curtain|carpet|bookshelf|cabinet|desk|stool|shelf|blanket",
 "coco81": "lamp|table lamp|bookshelf|cabinet|pillow|curtain|window|door|carpet|painting|picture frame|mirror|plate|guitar|piano|deer|rabbit|squirrel|butterfly|helicopter|flower|building|house|road|bridge|mountain|sky|beach|bathtub|towel|candle|basket|box|trash can|mailbox|billboard|statue|fountain|tunnel|flag|awning|shopping cart|barrier|tent|shelf|blanket|napkin|tablecloth|jar|camera|camel|kangaroo|tomato|potato|egg|bread|cheese|grape|strawberry|watermelon|pineapple|faucet|soap|washing machine|blender|kettle|pan|ladder|bucket|broom|hammer|jellyfish|turtle|dolphin|antelope|cheetah|gorilla|bee|spider|mushroom|cactus|palm tree|hedge|pumpkin|pasta|soup|salad|steak|sushi|candy",
}
HAND_NEG = {
 "voc": "lion|tiger|wolf|fox|goat|monkey|pig|lorry|tram|helmet",
 "cityscapes": "dog|cat|bird|pigeon|cow|sheep|lion|stroller|traffic cone|kite",
 "coco81": "lion|tiger|wolf|fox|goat|monkey|pig|lorry cab|tram|hat|shoe|sunglasses",
}
for preset, text in NEG.items():
    for phrase in text.split("|"):
        d = rows.get((preset, phrase))
        add(preset, phrase, "background", d[1] if d and d[0] == "background" else f"guideline:{preset}")
HAND_NEG = {
 "voc": "lion|tiger|wolf|fox|goat|monkey|pig|tram|streetcar",
 "cityscapes": "dog|cat|bird|pigeon|cow|sheep|lion|stroller|traffic cone|wheelbarrow",
 "coco81": "lion|tiger|wolf|fox|goat|monkey|pig|hat|shoe|sunglasses|helmet|jacket",
}
for preset, text in HAND_NEG.items():
    for phrase in text.split("|"):
        add(preset, phrase, "background", f"guideline:{preset}")

# --- ADE20K-150: objectInfo150's own synonym column, plus guideline-style hyponyms and negatives ---------------
ade = ClassList.preset("ade20k")
JUNK = {"wheel", "brand", "puff", "mortal", "soul", "pall", "mantle", "idiot box", "boob tube", "goggle box", "telly", "crapper", "throne", "pot",
        "can", "commode", "potty", "stool", "double", "press", "lounge", "span", "charabanc", "jitney", "omnibus",
        "passenger vehicle", "individual", "someone", "somebody", "machine", "case", "stand", "cover", "falls",
        "display case", "transporter", "screen", "chest", "bill", "card", "notice", "brute", "beast", "creature",
        "fauna", "animate being", "trade name", "brand name", "marque", "data processor", "information processing system",
        "computing device", "computing machine", "electronic computer", "pendant", "pendent", "conveyer", "conveyor",
        "tub", "bath", "bathing tub", "range", "kitchen range", "kitchen stove", "cooking stove", "light source",
        "ash bin", "ash-bin", "ashbin", "trash barrel", "wastebin", "flora", "plant life", "dress", "wearing apparel",
        "covered stand", "natatorium", "swimming bath", "moving staircase", "moving stairway", "balusters", "hutch",
        "hood", "exhaust hood", "drapery", "drape", "mount", "route", "edifice", "flooring", "icebox", "vitrine",
        "silver screen", "projection screen", "cubicle", "stall", "kiosk", "autobus", "motorbus", "motorcoach",
        "coach", "handbasket", "cask", "collapsible shelter", "screen door", "fencing", "pedestal", "posting",
        "dish washer", "dishwashing machine", "automatic washer", "storage tank", "wharfage", "bureau", "monitoring device"}
for line in args.ade.read_text(encoding="utf-8").splitlines()[1:]:
    fields = line.split("\t")
    names = [n.strip() for n in fields[4].split(",")]
    label = ade.names[int(fields[0])]
    for alt in names[1:]:
        if alt and alt not in JUNK and ade.match(alt) is None:
            add("ade20k", alt, label, "ade20k:objectInfo150 name column")
ADE_HAND = """dog animal|cat animal|horse animal|cow animal|bird animal|sheep animal|elephant animal|giraffe animal|laptop computer|desktop computer computer|backpack bag|handbag bag|suitcase bag|teddy bear plaything|doll plaything|motorcycle minibike|scooter minibike|tv television receiver|television television receiver|cupboard cabinet|kitchen cabinet cabinet|trash can ashcan|street lamp streetlight|lamp post streetlight|window windowpane|pizza food|bread food|sandwich food|cake food|bookshelf bookcase|sailboat boat|canoe boat|yacht ship|cruise ship ship|jeep car|taxi car|sedan car|lorry truck|pickup truck truck|minivan van|footpath path|staircase stairway|man person|woman person|child person|boy person|girl person|pedestrian person|jacket apparel|shirt apparel|coat apparel|dinner plate plate|wine glass glass|drinking glass glass|wall clock clock|alarm clock clock|flower vase vase|office chair swivel chair|stone rock|boulder rock|lawn grass|pond lake|ocean sea|stream river|hills hill|cliff rock|highway road|street road|pavement sidewalk|armchairs armchair|couch sofa|bunk bed bed|pillows pillow|carpet rug|doormat rug|shelves shelf|kitchen counter countertop|stovetop stove|gas stove stove|palm tree palm|pine tree tree|oak tree tree|bush plant|shrub plant|houseplant plant|potted plant plant|flowers flower|rose flower|poster poster|billboard signboard|street sign signboard|traffic signal traffic light|stoplight traffic light|garbage can ashcan|washing machine washer|fridge refrigerator|microwave oven microwave|monitor screen monitor|computer monitor monitor|skyscrapers skyscraper|apartment building building|office building building|cottage house|cabin hovel|hut hovel|bicycle bicycle|bike bicycle|aeroplane airplane|jet airplane|plane airplane|flagpole pole|telephone pole pole|bathroom sink sink|kitchen sink sink|toilet bowl toilet|bath towel towel|shower curtain curtain|window blind blind|lampshade lamp|desk lamp lamp|table lamp lamp|ceiling light light|ceiling fan fan|radiator heater radiator|wicker basket basket|cardboard box box|storage box box|tray tray|serving tray tray|wooden barrel barrel|beach umbrella canopy|ball ball|soccer ball ball|football ball|painting painting|picture painting|framed picture painting|statue sculpture|bronze statue sculpture|bench bench|park bench bench|ottoman ottoman|footstool ottoman|bar stool stool|chandelier chandelier|tent tent|crib cradle|baby crib cradle|swimming pool swimming pool|waterfall waterfall|fountain fountain|pier pier|dock pier|flag flag|banner flag""".split("|")
for item in ADE_HAND:
    phrase, label = item.split(" ", 1) if item.count(" ") == 1 else None, None
    parts = item.split(" ")
    # longest label suffix that is an ADE class
    for cut in range(1, len(parts)):
        phrase, label = " ".join(parts[:cut]), " ".join(parts[cut:])
        if label in ade.names:
            break
    else:
        raise SystemExit(item)
    add("ade20k", phrase, label, "guideline:ade20k (hyponym of the class)")
for phrase in ("guitar|piano|violin|drum|umbrella|helmet|knife|fork|spoon|scissors|cell phone|camera|kite|"
               "skateboard|surfboard|frisbee|ski|snowboard|tennis racket|baseball bat|toothbrush|hair dryer|"
               "remote control|fire hydrant|parking meter|traffic cone|mailbox|kettle|frying pan|train|tram|helicopter|"
               "sunglasses|necklace|wristwatch|wallet|hammer|ladder|broom|bucket|toilet paper|soap|faucet|"
               "headphones|microphone|laptop bag charger|wheelchair|stroller|shopping cart|tractor|"
               "forklift|excavator|crane|rocket|satellite dish").split("|"):
    if phrase == "laptop bag charger":
        continue
    add("ade20k", phrase, "background", "guideline:ade20k (not among the 150 classes)")

seen = set()
final = []
for r in out:
    if (r[0], r[1]) in seen:
        continue
    seen.add((r[0], r[1])); final.append(r)
import collections
print(collections.Counter((r[0], r[2] == "background") for r in final), file=sys.stderr)
for r in final:
    print("\t".join(r))
